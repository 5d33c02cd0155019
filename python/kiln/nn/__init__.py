"""kiln.nn: layers as Python modules (subclass nn.Module), nn.init and nn.functional."""
from . import functional  # noqa: F401
from . import init  # noqa: F401
from .modules import *  # noqa: F401,F403
from . import utils  # noqa: F401,E402
