"""The defaults before the cross-dataset recipe study (benchmarks/recipes.py), as overrides.

Tests written for them pin them: what they check (resume, export, warm starts, samplers, ...) does not
depend on the recipe, and the study's recipe (tied tables, dropout, bfloat16 on AMX CPUs, sequence
batching, a cosine schedule) would change their exact numbers and triple their time.
"""

PRE_RECIPE = ["model.tie_embeddings=false", "model.dropout=0.0", "model.compute_dtype=float32",
              "train.batching=positions", "train.lr_schedule=constant"]
