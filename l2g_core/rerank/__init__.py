"""Stage-2 building blocks: SMACOF MDS, SuperGlobal re-ranking and the L2G re-ranker."""
