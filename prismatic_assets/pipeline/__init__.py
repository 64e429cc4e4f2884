"""The pipeline layer: one plain function per box of the lineage and per round stage.

    seed.py          seed data -> samples table
    embeddings.py    samples -> projected gradient vectors (cached by key)
    clusters.py      vectors -> spherical k-means clustering, sparse clusters marked
    scores.py        vectors -> G-Vendi
    round.py         one synthesis round: a short sequence of the stages in round_stages.py
    distill.py       training set and the SFT launch
    evaluation.py    held-out sets and student accuracy

Functions here join `core/` algorithms to the metadata store. No Dagster: the assets in
`prismatic_assets/orchestration/assets/` and the `prismatic` CLI call these. Progress goes through
callbacks.
"""
