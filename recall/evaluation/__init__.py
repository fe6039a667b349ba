"""Offline evaluation: leave-last-out HR@K / NDCG@K by item id over the whole catalogue.

`metrics` turns ranks into numbers; `protocol` runs the faiss search (filtered and unfiltered)
and the most-popular baseline under the protocol in DESIGN.md.
"""
