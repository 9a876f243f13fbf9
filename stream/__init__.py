"""stream: the Kafka-native service (ingest, query, merge loops) around :mod:`l2g_core` and :mod:`plugins`.

Importing the package sets ``OMP_WAIT_POLICY=PASSIVE`` unless the environment already chooses: a worker runs OpenMP
code from several threads (FAISS in the query thread, torch in the merge and ingest threads), and libgomp's default
of spinning idle thread teams steals the cores from the team that has work. Measured on 2 cores: stage 1 went from
~300 to ~25 ms and the L2G stage 2 from ~1000 to ~190 ms. It only takes effect when set before torch and FAISS load,
which ``l2g-stream`` and ``python -m stream.cli`` guarantee.
"""

import os as _os

_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
