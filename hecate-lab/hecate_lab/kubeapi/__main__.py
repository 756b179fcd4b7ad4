"""``python -m hecate_lab.kubeapi``: the lab's emulated Kubernetes API as a process."""

import sys

from hecate_lab.kubeapi.server import main

sys.exit(main())
