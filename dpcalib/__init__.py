"""dpcalib: differential-privacy accounting and noise calibration for the subsampled Gaussian mechanism.

A user needs ``import dpcalib`` alone::

    import dpcalib
    sigma = dpcalib.calibrate_sigma(eps=2.0, delta=1e-5, q=0.01, steps=1000)
    eps = dpcalib.epsilon(sigma=sigma, q=0.01, steps=1000, delta=1e-5)
    acc = dpcalib.make_accountant("rdp").compose(dpcalib.dpsgd_event(sigma=sigma, q=0.01, steps=1000))
    acc.epsilon(1e-5)

numpy, scipy and click only; importing dpcalib never imports torch.
"""

from .accountant import (
    ACCOUNTANTS,
    Accountant,
    PldAccountant,
    RdpAccountant,
    accountant_from_state_dict,
    make_accountant,
)
from .calibrate import (
    calibrate_q,
    calibrate_sigma,
    calibrate_sigma_for,
    calibrate_steps,
    calibrate_steps_for,
    delta,
    epsilon,
    event_delta,
    event_epsilon,
)
from .discrete import SkellamPlan, plan_skellam, rounded_l1_bound, rounded_l2_bound, wrap_probability
from .conversion import optimise_delta, optimise_epsilon, rdp_to_delta, rdp_to_epsilon
from .errors import (
    DpcalibError,
    DpcalibWarning,
    InvalidArgumentError,
    OrderRangeWarning,
    UnreachableTargetError,
    UnsupportedEventError,
)
from .events import (
    Composed,
    Event,
    Gaussian,
    Neighbouring,
    Skellam,
    PoissonSampled,
    Repeated,
    SampledWithoutReplacement,
    Sampler,
    ShuffledEpoch,
    dpsgd_event,
    event_from_dict,
    event_to_dict,
    sampler_of,
    shuffled_epochs,
    training_event,
)
from . import validation
from .skellam import poisson_skellam_rdp, skellam_rdp, without_replacement_skellam_rdp
from .rdp import DEFAULT_ORDERS, gaussian_rdp, poisson_gaussian_rdp, without_replacement_gaussian_rdp
from .audit import AuditBound, audit_epsilon_lower, audit_p_value
from .report import AttackBound, RiskReport, TradeOff, gdp_mu, gdp_tpr, privacy_profile, risk_report, tradeoff

__version__ = "0.1.0"

__all__ = [
    "__version__",
    # queries and calibration
    "epsilon",
    "delta",
    "event_epsilon",
    "event_delta",
    "calibrate_sigma",
    "calibrate_sigma_for",
    "calibrate_steps",
    "calibrate_steps_for",
    "calibrate_q",
    # distributed discrete noise (dpcalib.discrete)
    "plan_skellam",
    "SkellamPlan",
    "rounded_l2_bound",
    "rounded_l1_bound",
    "wrap_probability",
    # accountants
    "Accountant",
    "RdpAccountant",
    "PldAccountant",
    "ACCOUNTANTS",
    "make_accountant",
    "accountant_from_state_dict",
    # events
    "Event",
    "Gaussian",
    "Skellam",
    "PoissonSampled",
    "SampledWithoutReplacement",
    "ShuffledEpoch",
    "Repeated",
    "Composed",
    "Neighbouring",
    "Sampler",
    "sampler_of",
    "shuffled_epochs",
    "dpsgd_event",
    "training_event",
    "event_to_dict",
    "event_from_dict",
    # RDP curves and conversion
    "DEFAULT_ORDERS",
    "gaussian_rdp",
    "poisson_gaussian_rdp",
    "without_replacement_gaussian_rdp",
    "skellam_rdp",
    "poisson_skellam_rdp",
    "without_replacement_skellam_rdp",
    "rdp_to_epsilon",
    "rdp_to_delta",
    "optimise_epsilon",
    "optimise_delta",
    # membership-inference risk (dpcalib.report)
    "risk_report",
    "RiskReport",
    "AttackBound",
    "TradeOff",
    "tradeoff",
    "privacy_profile",
    "gdp_mu",
    "gdp_tpr",
    # one-run privacy audit (dpcalib.audit)
    "audit_epsilon_lower",
    "audit_p_value",
    "AuditBound",
    # argument validation (for callers such as fltrain)
    "validation",
    # errors
    "DpcalibError",
    "InvalidArgumentError",
    "UnreachableTargetError",
    "UnsupportedEventError",
    "DpcalibWarning",
    "OrderRangeWarning",
]
