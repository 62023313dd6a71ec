import subprocess
import sys

import dpcalib


def test_import_dpcalib_never_imports_torch_or_scipy_eagerly():
    code = "import sys, dpcalib, dpcalib.cli; print('torch' in sys.modules, 'scipy.special' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_public_api_is_exported():
    for name in dpcalib.__all__:
        assert hasattr(dpcalib, name), name
    for name in ("epsilon", "delta", "calibrate_sigma", "calibrate_steps", "calibrate_q", "event_epsilon",
                 "calibrate_sigma_for", "make_accountant", "accountant_from_state_dict", "RdpAccountant"):
        assert name in dpcalib.__all__
