"""Second-order optimisers for PINN losses that read the Taylor graph's linear layers.

- :class:`KFAC`: Kronecker-factored curvature for PINNs (Dangel, Müller, Zeinhofer,
  NeurIPS 2024), step rules KFAC* (Martens & Grosse 2015, Sec. 7), line search, or lr;
- :class:`ENGD`: energy natural gradient descent (Müller & Zeinhofer, ICML 2023), the
  dense Gramian or its Woodbury solve in sample space (``solve="woodbury"``);
- :class:`SPRING`: natural gradient with momentum in sample space (Goldshlager et al.
  2024; Guzmán-Cordero, Dangel, Goldshlager, Zeinhofer, NeurIPS 2025);
- :func:`kfac_factors`, :func:`gramian`: the curvature building blocks.

See docs/kfac.md.
"""

from .engd import ENGD
from .gramian import gramian
from .kfac import KFAC, kfac_factors
from .kronecker import KroneckerSum
from .spring import SPRING

__all__ = ["ENGD", "KFAC", "SPRING", "KroneckerSum", "gramian", "kfac_factors"]
