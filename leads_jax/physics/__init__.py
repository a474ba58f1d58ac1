"""Physics kernels: cardiac reaction models, diffusion operators, the McSharry ECG ODE."""
