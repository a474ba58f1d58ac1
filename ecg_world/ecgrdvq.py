"""Reader and calibration targets for the FDA SCR-002 / ECGRDVQ clinical table.

Study: "ECG Effects of Ranolazine, Dofetilide, Verapamil, and Quinidine in Healthy Subjects"
(Johannesen L et al., Clin Pharmacol Ther 2014;96:549-558; PhysioNet ECGRDVQ, ODC-By).
One row per 10-s 12-lead ECG, triplicates at each time point (``TPT``, hours after the dose;
-0.5 = pre-dose baseline), five-period crossover.

Everything is computed from whatever table is given: subjects, drugs and time points are
read from the file, never assumed.

**Repairs (documented, tested):**

- drug names are mapped to canonical keys through the drug library's aliases
  (``"Quinidine Sulph"`` -> ``quinidine``, ``"Verapamil HCL"`` -> ``verapamil``); an unknown
  drug name raises ``ValueError``;
- interval values that are negative 32-bit wrap-arounds (``PR`` < -2**31 + 10**6) get ``2**32``
  added back; other negative or zero intervals become ``NaN``;
- ``NA`` intervals stay ``NaN`` and are skipped by the triplicate means;
- concentrations are converted to ng/mL using ``PCSTRESU`` (dofetilide is pg/mL) and to free
  (unbound) nM with the drug's molecular weight and unbound fraction;
- a missing required column raises ``ValueError`` naming it.

**Targets** (:func:`compute_targets`): per drug and time point the mean, SD, n and a two-sided
t-based 90% confidence band of the placebo-corrected change from baseline (ddX: change from the
same period's pre-dose mean minus placebo's change at the same time, per subject), for QTcF
(Fridericia, QT/RR^(1/3) with RR in s), PR, QRS and heart rate; placebo's own change from
baseline; baseline distributions.

**Regression to the mean of the period baselines** (:func:`baseline_regression`). Each
period's change is taken from a single pre-dose time point, so that time point's noise enters
every change of the period with the opposite sign: a period whose baseline happened to be high
shows a negative change all day, drug or not. In this table the dofetilide period's baseline
PR is 2.2 ms above the placebo period's (and ranolazine's 3.3 ms below), which makes up most of
the observed ddPR of these two drugs. The slope ``lambda`` of the change on the period
baseline's deviation from the subject's mean over periods is estimated by an analysis of
covariance with drug x time fixed effects (the baseline-covariate term of the
concentration-QTc white paper: Garnett C et al., J Pharmacokinet Pharmacodyn 2018;45:383-397),
and the expected ddX of *these* subjects is the drug's effect plus
``-lambda * mean(B_drug - B_placebo)``. The targets carry that term (``dd_rtm``, ``pl_rtm``)
so that a simulation can be compared either conditionally on the study's baselines or as a
population expectation; the observed means and bands are never altered.
"""

from __future__ import annotations

import pathlib

import numpy as np
import pandas as pd
import xarray as xr
from scipy import stats

from leads_jax.physics.ecg_fiducials import qtc_bazett as qtc_bazett
from leads_jax.physics.ecg_fiducials import qtc_fridericia as qtc_fridericia

from .drugs import DrugLibrary, concentration_to_ng_ml, default_library

REQUIRED_COLUMNS: tuple[str, ...] = ("RANDID", "EXTRT", "TPT", "RR", "PR", "QT", "QRS")
OPTIONAL_COLUMNS: tuple[str, ...] = ("EXDOSE", "EXDOSU", "PCSTRESN", "PCSTRESU", "SEX", "AGE",
                                     "JTPEAK")
INTERVALS: tuple[str, ...] = ("RR", "PR", "QT", "QRS")
ENDPOINTS: tuple[str, ...] = ("QTcF", "PR", "QRS", "HR")
#: the early-repolarisation endpoint, J-Tpeak corrected for rate as in the study,
#: ``JTpc = J-Tpeak / RR^0.58`` (RR in s; Johannesen L et al., Clin Pharmacol Ther
#: 2014;96:549-558): hERG block prolongs it, late-Na and L-type Ca block shorten it, so it
#: identifies the map's mitigation terms (:mod:`ecg_world.calibration`).
JT_ENDPOINT = "JTpc"
JTPC_EXPONENT = 0.58
BASELINE_TPT = -0.5
_WRAP = 2**32


def read_ecgrdvq(
    path: str | pathlib.Path | pd.DataFrame, *, library: DrugLibrary | None = None
) -> pd.DataFrame:
    """Read (and repair) the SCR-002 clinical table.

    **Arguments:** ``path`` a CSV file or an already loaded DataFrame; ``library`` the drug
    library used to canonicalise names (default: the package's).

    **Returns:** a DataFrame with the original columns plus ``subject`` (int), ``drug``
    (canonical key), ``tpt`` (h), ``HR`` (bpm), ``QTcF``, ``QTcB`` (ms), ``conc_ng_ml`` and
    ``conc_free_nM``, and ``JTpc`` (ms) where the table has ``JTPEAK``.
    ``df.attrs["repairs"]`` counts the repairs made.
    """
    library = library or default_library()
    if isinstance(path, pd.DataFrame):
        df = path.copy()
    else:
        path = pathlib.Path(path)
        if not path.exists():
            raise FileNotFoundError(
                f"ECGRDVQ table not found: {path}. Pass the SCR-002 clinical table "
                "(SCR-002.Clinical.Data.csv from PhysioNet's ECGRDVQ database, "
                "https://physionet.org/content/ecgrdvq/; a copy ships in the repository's "
                "tests/data/ecgrdvq/).")
        df = pd.read_csv(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(
            f"ECGRDVQ table lacks required columns {missing}; required: {list(REQUIRED_COLUMNS)}"
        )
    repairs = {"wrapped_intervals": 0, "nonpositive_intervals": 0, "na_intervals": 0}
    for c in INTERVALS:
        v = pd.to_numeric(df[c], errors="coerce").astype(float)
        wrapped = v < -(2**31) + 10**6
        repairs["wrapped_intervals"] += int(wrapped.sum())
        v = v.where(~wrapped, v + _WRAP)
        bad = v <= 0
        repairs["nonpositive_intervals"] += int(bad.sum())
        v = v.where(~bad)
        repairs["na_intervals"] += int(v.isna().sum())
        df[c] = v
    if "JTPEAK" in df.columns:
        jt = pd.to_numeric(df["JTPEAK"], errors="coerce").astype(float)
        repairs["nonpositive_intervals"] += int((jt <= 0).sum())
        df["JTPEAK"] = jt.where(jt > 0)
        df[JT_ENDPOINT] = df["JTPEAK"] / (df["RR"] / 1000.0) ** JTPC_EXPONENT
    names = df["EXTRT"].astype(str)
    unknown = sorted({n for n in names.unique() if n not in library})
    if unknown:
        raise ValueError(f"unknown drug names in EXTRT: {unknown}; known: {list(library.names)}")
    df["drug"] = names.map(library.canonical)
    df["subject"] = df["RANDID"].astype(int)
    df["tpt"] = pd.to_numeric(df["TPT"], errors="raise").astype(float)
    df["HR"] = 60000.0 / df["RR"]
    df["QTcF"] = qtc_fridericia(df["QT"], df["RR"])
    df["QTcB"] = qtc_bazett(df["QT"], df["RR"])
    conc = np.full(len(df), np.nan)
    free = np.full(len(df), np.nan)
    if "PCSTRESN" in df.columns:
        units = df["PCSTRESU"] if "PCSTRESU" in df.columns else pd.Series(index=df.index)
        for drug_key, idx in df.groupby("drug").groups.items():
            drug = library[drug_key]
            sub_units = units.loc[idx]
            values = pd.to_numeric(df.loc[idx, "PCSTRESN"], errors="coerce").to_numpy(float)
            # rows without a unit use the drug's documented study unit
            unit = sub_units.fillna(drug.concentration_unit).astype(str).to_numpy()
            ng = np.array([
                concentration_to_ng_ml(v, u) if np.isfinite(v) else np.nan
                for v, u in zip(values, unit, strict=True)
            ])
            pos = df.index.get_indexer(idx)
            conc[pos] = ng
            free[pos] = ng / drug.molecular_weight * 1e3 * drug.unbound_fraction  # ng/mL -> nM
    df["conc_ng_ml"] = conc
    df["conc_free_nM"] = free
    df.attrs["repairs"] = repairs
    return df


def as_read_table(
    table: str | pathlib.Path | pd.DataFrame, *, library: DrugLibrary | None = None
) -> pd.DataFrame:
    """``table`` if it is already a table read by :func:`read_ecgrdvq` (it has the canonical
    ``drug`` column), else read (and repair) it from a path or raw DataFrame."""
    if isinstance(table, pd.DataFrame) and "drug" in table:
        return table
    return read_ecgrdvq(table, library=library)


def triplicate_means(df: pd.DataFrame) -> pd.DataFrame:
    """Mean of the replicate ECGs per subject, drug and time point (NaN skipped)."""
    cols = [c for c in ("RR", "PR", "QT", "QRS", "HR", "QTcF", "QTcB", JT_ENDPOINT,
                        "conc_ng_ml", "conc_free_nM") if c in df.columns]
    return df.groupby(["subject", "drug", "tpt"], as_index=False)[cols].mean()


def change_from_baseline(means: pd.DataFrame, endpoints=ENDPOINTS) -> pd.DataFrame:
    """Add ``d<endpoint>`` = value minus the same subject+period pre-dose mean.

    A subject-period without a baseline row gets NaN changes.
    """
    base = means[means.tpt == BASELINE_TPT].set_index(["subject", "drug"])[list(endpoints)]
    out = means.copy()
    key = pd.MultiIndex.from_frame(out[["subject", "drug"]])
    b = base.reindex(key)
    for e in endpoints:
        out["d" + e] = out[e].to_numpy() - b[e].to_numpy()
    return out


def placebo_corrected(changes: pd.DataFrame, endpoints=ENDPOINTS,
                      placebo: str = "placebo") -> pd.DataFrame:
    """Add ``dd<endpoint>`` = change on drug minus the same subject's placebo change, same time."""
    pl = changes[changes.drug == placebo].set_index(["subject", "tpt"])
    out = changes[changes.drug != placebo].copy()
    key = pd.MultiIndex.from_frame(out[["subject", "tpt"]])
    for e in endpoints:
        out["dd" + e] = out["d" + e].to_numpy() - pl["d" + e].reindex(key).to_numpy()
    return out


def baseline_regression(
    means: pd.DataFrame, endpoints=ENDPOINTS, placebo: str = "placebo"
) -> xr.Dataset:
    """Regression to the mean of the period baselines (see the module docstring).

    ``means``: triplicate means (:func:`triplicate_means`). Per endpoint, with ``B[s, p]`` the
    pre-dose mean of subject ``s`` in period (arm) ``p`` and ``dev = B - mean_p B[s, :]``, the
    change ``X[s, p, t] - B[s, p]`` is regressed on ``dev`` after removing the mean of every
    arm x time cell (analysis of covariance with drug x time fixed effects; the drug effects
    drop out, so the slope is a property of the measurements, not of any drug).

    **Returns:** Dataset with

    - ``rtm_slope`` (endpoint): ``lambda``, the expected change of the change from baseline per
      unit of baseline deviation is ``-lambda`` (0: baselines are exact; 1: all baseline
      deviation is noise); ``rtm_slope_se``: its standard error, clustered by subject;
    - ``base_dev`` (arm, endpoint): mean over subjects of ``dev`` per arm (placebo included);
    - ``base_diff`` (drug, endpoint): ``mean_s(B[s, drug] - B[s, placebo])`` over the subjects
      with both baselines, and ``dd_rtm = -lambda * base_diff``, the term a ddX of these
      subjects carries;
    - ``pl_rtm`` (endpoint): ``-lambda * mean_s dev[s, placebo]``, the same for placebo's
      change from baseline.
    """
    endpoints = tuple(endpoints)
    arms = sorted(means.drug.unique())
    drugs = [a for a in arms if a != placebo]
    slope = np.full(len(endpoints), np.nan)
    slope_se = np.full(len(endpoints), np.nan)
    base_dev = np.full((len(arms), len(endpoints)), np.nan)
    base_diff = np.full((len(drugs), len(endpoints)), np.nan)
    pl_rtm = np.full(len(endpoints), np.nan)
    for k, e in enumerate(endpoints):
        wide = means.pivot_table(index=["subject", "drug"], columns="tpt", values=e)
        if BASELINE_TPT not in wide.columns:
            continue
        b = wide[BASELINE_TPT]
        dev = b - b.groupby(level="subject").transform("mean")
        post = wide.drop(columns=BASELINE_TPT)
        long = post.sub(b, axis=0).stack().rename("y").reset_index()
        long["dev"] = dev.reindex(pd.MultiIndex.from_frame(long[["subject", "drug"]])).values
        long = long.dropna(subset=["y", "dev"])
        if len(long) < 3:
            continue
        cell = long.groupby(["drug", "tpt"])
        yc = long.y - cell.y.transform("mean")
        xc = long.dev - cell.dev.transform("mean")
        sxx = float((xc * xc).sum())
        if sxx <= 0:
            continue
        lam = -float((xc * yc).sum()) / sxx
        resid = yc + lam * xc
        score = (xc * resid).groupby(long.subject).sum()
        slope[k] = lam
        slope_se[k] = float(np.sqrt((score**2).sum()) / sxx)
        bw = b.unstack("drug")
        dv = dev.unstack("drug")
        for i, a in enumerate(arms):
            if a in dv:
                base_dev[i, k] = float(dv[a].mean())
        if placebo in bw:
            for i, d in enumerate(drugs):
                diff = (bw[d] - bw[placebo]).dropna() if d in bw else pd.Series(dtype=float)
                if diff.size:
                    base_diff[i, k] = float(diff.mean())
            pl_rtm[k] = -lam * float(dv[placebo].mean())
    return xr.Dataset(
        {"rtm_slope": (("endpoint",), slope), "rtm_slope_se": (("endpoint",), slope_se),
         "base_dev": (("arm", "endpoint"), base_dev),
         "base_diff": (("drug", "endpoint"), base_diff),
         "dd_rtm": (("drug", "endpoint"), -slope[None, :] * base_diff),
         "pl_rtm": (("endpoint",), pl_rtm)},
        coords={"endpoint": list(endpoints), "arm": arms, "drug": drugs})


def _summary(values: np.ndarray, level: float) -> tuple[float, float, int, float, float]:
    v = values[np.isfinite(values)]
    n = v.size
    if n == 0:
        return (np.nan, np.nan, 0, np.nan, np.nan)
    m = float(v.mean())
    sd = float(v.std(ddof=1)) if n > 1 else np.nan
    if n > 1:
        half = stats.t.ppf(0.5 + level / 2, n - 1) * sd / np.sqrt(n)
    else:
        half = np.nan
    return m, sd, n, m - half, m + half


def check_design(df: pd.DataFrame, placebo: str = "placebo") -> None:
    """The table must hold what placebo-corrected changes need, else ``ValueError`` (never
    all-NaN targets): placebo rows, pre-dose baseline rows (``TPT`` = -0.5) in the placebo
    and in at least one drug period, and at least one drug besides placebo. A table without
    concentrations is accepted: the calibration then keeps each such drug's PK constants from
    ``drugs.json`` (documented fallback, :func:`ecg_world.calibration.fit_pk`)."""
    arms = set(df["drug"].unique())
    if placebo not in arms:
        raise ValueError(f"the table has no placebo rows (EXTRT naming {placebo!r}; found "
                         f"{sorted(arms)}): placebo-corrected changes need a placebo period")
    drugs = sorted(arms - {placebo})
    if not drugs:
        raise ValueError("the table has only placebo rows: nothing to calibrate against")
    pre = df[df["tpt"] == BASELINE_TPT]
    if pre.empty:
        raise ValueError(f"the table has no pre-dose baseline rows (TPT = {BASELINE_TPT}): "
                         "changes from baseline cannot be computed")
    if placebo not in set(pre["drug"]):
        raise ValueError(f"the table has no pre-dose baseline rows (TPT = {BASELINE_TPT}) in "
                         "the placebo period")
    missing = [d for d in drugs if d not in set(pre["drug"])]
    if len(missing) == len(drugs):
        raise ValueError(f"no drug period has pre-dose baseline rows (TPT = {BASELINE_TPT}); "
                         f"drugs: {drugs}")


def compute_targets(
    table: str | pathlib.Path | pd.DataFrame,
    *,
    endpoints=None,
    level: float | int = 0.90,
    library: DrugLibrary | None = None,
) -> xr.Dataset:
    """Calibration targets computed from a table (a path, raw or already read DataFrame).

    ``endpoints``: default :data:`ENDPOINTS`, plus ``JTpc`` where the table has J-Tpeak.

    **Returns:** an ``xarray.Dataset`` with

    - ``dd_mean, dd_sd, dd_n, dd_lo, dd_hi`` (drug, time, endpoint): placebo-corrected change
      from baseline (non-placebo drugs), t-based ``level`` confidence band of the mean;
    - ``pl_mean, pl_sd, pl_n, pl_lo, pl_hi`` (time, endpoint): placebo change from baseline;
    - ``conc_median`` (drug, time): median total plasma concentration (ng/mL);
    - ``base_mean, base_sd`` (endpoint_all): baseline distribution over subjects (each
      subject's mean over its pre-dose triplicates of all periods), for RR, PR, QRS, QT, QTcF, HR;
    - ``rtm_slope, rtm_slope_se`` (endpoint), ``base_diff, dd_rtm`` (drug, endpoint), ``pl_rtm``
      (endpoint): regression to the mean of the period baselines (:func:`baseline_regression`);
      ``dd_mean`` and the bands are the observed values, not corrected;
    - attrs: subjects, level, repairs.
    """
    df = as_read_table(table, library=library)
    check_design(df)
    if endpoints is None:
        has_jt = JT_ENDPOINT in df and bool(np.isfinite(df[JT_ENDPOINT]).any())
        endpoints = ENDPOINTS + ((JT_ENDPOINT,) if has_jt else ())
    endpoints = tuple(endpoints)
    means = triplicate_means(df)
    ch = change_from_baseline(means, endpoints)
    dd = placebo_corrected(ch, endpoints)
    drugs = sorted(d for d in dd.drug.unique())
    times = np.sort(means.tpt.unique())
    shape = (len(drugs), len(times), len(endpoints))
    arrs = {k: np.full(shape, np.nan) for k in ("mean", "sd", "n", "lo", "hi")}
    for i, drug in enumerate(drugs):
        sub = dd[dd.drug == drug]
        for j, t in enumerate(times):
            st = sub[sub.tpt == t]
            for k, e in enumerate(endpoints):
                r = _summary(st["dd" + e].to_numpy(float), level)
                for name, val in zip(("mean", "sd", "n", "lo", "hi"), r, strict=True):
                    arrs[name][i, j, k] = val
    pl = ch[ch.drug == "placebo"]
    pshape = (len(times), len(endpoints))
    parrs = {k: np.full(pshape, np.nan) for k in ("mean", "sd", "n", "lo", "hi")}
    for j, t in enumerate(times):
        st = pl[pl.tpt == t]
        for k, e in enumerate(endpoints):
            r = _summary(st["d" + e].to_numpy(float), level)
            for name, val in zip(("mean", "sd", "n", "lo", "hi"), r, strict=True):
                parrs[name][j, k] = val
    conc = np.full((len(drugs), len(times)), np.nan)
    for i, drug in enumerate(drugs):
        sub = means[means.drug == drug]
        for j, t in enumerate(times):
            v = sub[sub.tpt == t].conc_ng_ml.to_numpy(float)
            v = v[np.isfinite(v)]
            if v.size:
                conc[i, j] = float(np.median(v))
    base_cols = ("RR", "PR", "QRS", "QT", "QTcF", "HR") + (
        (JT_ENDPOINT,) if JT_ENDPOINT in endpoints else ())
    base = means[means.tpt == BASELINE_TPT].groupby("subject")[list(base_cols)].mean()
    ds = xr.Dataset(
        {
            **{f"dd_{k}": (("drug", "time", "endpoint"), v) for k, v in arrs.items()},
            **{f"pl_{k}": (("time", "endpoint"), v) for k, v in parrs.items()},
            "conc_median": (("drug", "time"), conc),
            "base_mean": (("endpoint_all",), base.mean().to_numpy(float)),
            "base_sd": (("endpoint_all",), base.std(ddof=1).to_numpy(float)),
        },
        coords={"drug": drugs, "time": times, "endpoint": list(endpoints),
                "endpoint_all": list(base_cols)},
        attrs={
            "subjects": [int(s) for s in sorted(df.subject.unique())],
            "level": level,
            "repairs": str(df.attrs.get("repairs", {})),
            "units": "ms (QTcF, PR, QRS, JTpc), bpm (HR), h (time), ng/mL (conc_median)",
        },
    )
    rtm = baseline_regression(means, endpoints).reindex(drug=drugs)
    for name in ("rtm_slope", "rtm_slope_se", "base_diff", "dd_rtm", "pl_rtm"):
        ds[name] = rtm[name]
    ds["time"].attrs["units"] = "h after dose"
    return ds


def subject_baselines(df: pd.DataFrame) -> pd.DataFrame:
    """Per-subject baseline intervals (mean of pre-dose triplicates over all periods), ms."""
    means = triplicate_means(df)
    return means[means.tpt == BASELINE_TPT].groupby("subject")[
        ["RR", "PR", "QRS", "QT", "QTcF", "HR"]].mean()
