"""dpcalib: differential-privacy accounting and noise calibration for the subsampled Gaussian mechanism."""

__version__ = "0.1.0"
