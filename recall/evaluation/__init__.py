"""Offline evaluation: leave-last-out HR@K / NDCG@K by item id over the whole catalogue.

`metrics` turns ranks into numbers (HR, Recall, NDCG, MRR, coverage, popularity buckets);
`protocol` runs the faiss search (filtered and unfiltered) and the most-popular baseline under the
protocol in DESIGN.md; `index_quality` measures an approximate index against exact search;
`model_eval` connects trained towers to all of them.
"""
