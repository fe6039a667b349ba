"""The two towers as Keras 3 layers.

ItemTower holds exactly the `weights [N, D]` and `biases [N]` that `tf.nn.sampled_softmax_loss`
takes. UserTower maps (history, user features, example age) to a query vector `[batch, D]` such
that logit(user, item) = query · weights[item] + biases[item] — temperature and normalisation are
applied inside the towers, so the same vectors serve training and the faiss index.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from recall.model.gru import UnrolledGRU
from recall.model.min_gru import MinGRU
from recall.model.transformer import SelfAttentionEncoder


def _backing(var) -> tf.Variable:
    """The `tf.Variable` behind a Keras 3 variable (itself for a `tf.Variable`)."""
    inner = getattr(var, "_value", None)
    return inner if isinstance(inner, tf.Variable) else var


class ItemTower(keras.layers.Layer):
    """Item embedding table `[num_items, dim]` and optional bias `[num_items]`.

    `bias_init`: every item's initial bias (with `use_bias`; without it the bias stays zeros, as the
    index assumes). NCE/NEG start from −log(num_items), a self-normalised model (Z ≈ 1): their
    logistic loss pushes an item's bias down only when it is drawn as a negative, so a rare item
    starting at 0 would keep outranking the rest.
    """

    def __init__(self, num_items: int, dim: int, use_bias: bool = True, normalize: bool = False,
                 bias_init: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_items = num_items
        self.dim = dim
        self.use_bias = use_bias
        self.normalize = normalize
        self.bias_init = float(bias_init)
        self.embeddings = self.add_weight(
            shape=(num_items, dim),
            initializer=keras.initializers.TruncatedNormal(stddev=1.0 / dim**0.5),
            name="embeddings",
        )
        self.bias = self.add_weight(shape=(num_items,), name="bias", trainable=use_bias,
                                    initializer=keras.initializers.Constant(self.bias_init if use_bias else 0.0))
        # All state exists now. Without this a tied UserTower (which holds this layer) sees an
        # "unbuilt" sublayer when it is first called and Keras warns that it may fail later.
        self.built = True

    def weights_and_biases(self) -> tuple[tf.Tensor, tf.Tensor]:
        """`[N, D]` output vectors (L2-normalised in cosine mode) and `[N]` biases (zeros without bias).

        Without normalisation these are the backing `tf.Variable`s themselves, so the sampled losses'
        lookups are sparse reads of the touched rows (and their gradients `tf.IndexedSlices`). A Keras
        variable would be read whole first, and after a row-wise update TF copies the whole table on
        every such read (copy-on-read) — a step cost that grows with the catalogue.
        """
        if self.normalize:
            return tf.math.l2_normalize(self.embeddings, axis=-1), _backing(self.bias)
        return _backing(self.embeddings), _backing(self.bias)

    def call(self, ids):
        """ids int [...] → vectors [..., D]."""
        w, _ = self.weights_and_biases()
        return tf.gather(w, ids)

    def get_config(self):
        return {**super().get_config(), "num_items": self.num_items, "dim": self.dim,
                "use_bias": self.use_bias, "normalize": self.normalize, "bias_init": self.bias_init}


def _last_columns(slots, window: int):
    """The last `window` columns of `slots` [B, M], left-padded with −1 when M < window (a short
    serving history): always `[B, window]` with a static width (the unrolled GRU needs it)."""
    if slots.shape[1] is not None and slots.shape[1] >= window:
        return slots[:, -window:]
    short = tf.maximum(window - tf.shape(slots)[1], 0)
    return tf.reshape(tf.pad(slots, [[0, 0], [short, 0]], constant_values=-1)[:, -window:], [-1, window])


class UserTower(keras.layers.Layer):
    """History (+ recent items) pooling, user-feature embeddings, example age → ReLU MLP → `[batch, D]`.

    Inputs (a dict):
      history        int32 [batch, max_history]  internal ids, right-aligned, < 0 = padding
      age            float32 [batch]             example age (0 at serving time); ignored unless example_age
      user_features  int32 [batch, F]            per-feature codes, 0 = unknown; only when F > 0

    Parts fed to the MLP: the history mean, and optionally the recent mean + latest item (`recent`),
    the last items in slots (`last_items`), attention pooling (`attention`), a GRU over the last
    `gru` items, a minGRU over the last `min_gru` items (parallel, recall/model/min_gru.py), and a
    SASRec-style self-attention encoder over the last `transformer` items (`transformer_blocks`
    blocks, `transformer_heads` heads; recall/model/transformer.py).
    """

    def __init__(
        self,
        num_items: int,
        dim: int,
        hidden: list[int],
        max_history: int,
        feature_sizes: list[int] | None = None,
        feature_dim: int = 16,
        recent: int = 0,
        last_items: int = 0,
        attention: bool = False,
        gru: int = 0,
        min_gru: int = 0,
        min_gru_heads: int | None = None,
        transformer: int = 0,
        transformer_blocks: int = 2,
        transformer_heads: int = 1,
        transformer_dropout: float = 0.2,
        example_age: bool = True,
        dropout: float = 0.0,
        normalize: bool = False,
        temperature: float = 1.0,
        shared_items: ItemTower | None = None,
        compute_dtype: str = "float32",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_items = num_items
        self.dim = dim
        self.hidden = list(hidden)
        self.max_history = max_history
        self.feature_sizes = list(feature_sizes or [])
        self.feature_dim = feature_dim
        self.recent = recent
        self.last_items = last_items
        self.attention = attention
        self.gru_window = gru
        self.min_gru_window = min_gru
        self.min_gru_heads = min_gru_heads
        self.transformer_window = transformer
        self.transformer_blocks = transformer_blocks
        self.transformer_heads = transformer_heads
        self.transformer_dropout = transformer_dropout
        self.example_age = example_age
        self.dropout_rate = dropout
        self.normalize = normalize
        self.temperature = temperature
        self.compute_dtype_name = compute_dtype
        # bfloat16: the hidden layers (and their dropout) run under Keras' mixed policy (float32 weights,
        # bfloat16 matmuls) and the GRU casts its matmul operands; the pooled parts, the embeddings, the
        # output layer and the loss stay float32.
        policy = "mixed_bfloat16" if compute_dtype == "bfloat16" else None
        # Weight tying: history embeddings are the output table itself (a layer reference, so
        # checkpoints hold one copy).
        self.shared_items = shared_items
        if shared_items is None:
            self.history_embeddings = self.add_weight(
                shape=(num_items, dim),
                initializer=keras.initializers.TruncatedNormal(stddev=1.0 / dim**0.5),
                name="history_embeddings",
            )
        self.feature_embeddings = [
            keras.layers.Embedding(size + 1, feature_dim, name=f"feature_{i}")
            for i, size in enumerate(self.feature_sizes)
        ]
        self.mlp = [keras.layers.Dense(width, activation="relu", name=f"hidden_{i}", dtype=policy)
                    for i, width in enumerate(self.hidden)]
        # tf.train.Checkpoint does not look inside Keras 3's tracked lists (keras-team/keras#18398):
        # without an attribute of their own these layers' weights are missing from every checkpoint.
        for layer in [*self.feature_embeddings, *self.mlp]:
            setattr(self, layer.name, layer)
        self.drop = keras.layers.Dropout(dropout, dtype=policy) if dropout > 0 else None
        # float32 even under bfloat16: the query vector keeps float32 precision for the index's ranking
        # (the layer is 1/20 of the shipped tower's matmul work).
        self.out = keras.layers.Dense(dim, name="output")
        if gru:
            # A GRU over the last `gru` items (GRU4Rec-style): order and short-term dynamics. Keras'
            # GRU function and weights, unrolled over the window (recall/model/gru.py; with split
            # batches the shipped config trains 14,968 → 21,037 examples/s, benchmarks/quality.py);
            # the window is padded to `gru` steps, so the exported tower still takes any history length.
            self.sequence = UnrolledGRU(dim, matmul_dtype=compute_dtype, name="sequence")
        if min_gru:
            # The same recurrence shape without h_{t-1} in the gates: one matmul, no sequential loop.
            self.min_gru = MinGRU(dim, min_gru_heads, name="min_gru")
        if transformer:
            # SASRec-style self-attention over the last `transformer` items; its latest position is
            # one more part beside the pools (recall/model/transformer.py).
            self.encoder = SelfAttentionEncoder(transformer, dim, transformer_blocks, transformer_heads,
                                                transformer_dropout, name="encoder")
        if attention:
            # Attention pooling: the latest item asks which history items matter; positions are learned.
            self.position_embeddings = self.add_weight(shape=(max_history, dim), initializer="zeros",
                                                       name="position_embeddings")
            self.attention_query = keras.layers.Dense(dim, use_bias=False, name="attention_query")

    def _history_table(self):
        """The history table as its backing `tf.Variable` (gathers are sparse reads; see weights_and_biases)."""
        return _backing(self.shared_items.embeddings if self.shared_items is not None else self.history_embeddings)

    def _history_lookup(self, history, slots: bool = True):
        """The batch's distinct history items, looked up once, for every history part.

        history int [B, M] → (mean `[B, D]` of each row's non-padding items (zeros for an empty
        history), rows `[R + 1, D]`: the R distinct items and a zero row last, which padding reads,
        slots int32 `[B, M]`: each position's index into rows, −1 at padding; None when `slots` is
        false — no window needs them).

        The mean (a sparse segment mean) and the per-position window (`_embed_window`) both read these
        rows, so the table's gradient is one row per distinct item — summed in the `[R, D]` rows first
        — not one per (row, position): the gather-and-mask form costs B·M gradient rows that the
        optimizer has to aggregate, the step's largest cost.
        """
        positions = tf.where(history >= 0)  # [nnz, 2], row-major, so segment ids are sorted
        distinct, slot = tf.unique(tf.gather_nd(history, positions))
        rows = tf.gather(self._history_table(), distinct)
        mean = tf.sparse.segment_mean(rows, slot, tf.cast(positions[:, 0], tf.int32),
                                      num_segments=tf.shape(history)[0])
        if not slots:
            return mean, None, None
        # The zero row last: padding reads it (rows may be empty: a batch of empty histories).
        padded = tf.concat([rows, tf.zeros([1, self.dim], rows.dtype)], axis=0)
        return mean, padded, tf.tensor_scatter_nd_update(tf.fill(tf.shape(history), -1), positions, slot)

    @staticmethod
    def _embed_window(rows, slots):
        """Per-position embeddings `[B, w, D]` (zeros at padding) and mask `[B, w, 1]` of `slots` [B, w]
        into `rows` `[R + 1, D]` (zero row last, as `_history_lookup` returns them)."""
        present = slots >= 0
        emb = tf.gather(rows, tf.where(present, slots, tf.shape(rows)[0] - 1))
        return emb, ops.cast(present, "float32")[..., None]

    @staticmethod
    def _masked_mean(emb, mask):
        return ops.sum(emb, axis=1) / ops.maximum(ops.sum(mask, axis=1), 1.0)

    def _attention_pool(self, emb, mask):
        """Softmax-weighted history [B, D]: weights from (latest item → query) · (item + position)."""
        keys = emb + self.position_embeddings[None] * mask  # [B, M, D]
        query = self.attention_query(emb[:, -1])  # [B, D]
        scores = ops.einsum("bd,bmd->bm", query, keys) / self.dim**0.5
        scores = ops.where(mask[..., 0] > 0, scores, -1e9)
        weights = ops.softmax(scores, axis=-1) * mask[..., 0]  # all-padding rows → zeros
        return ops.einsum("bm,bmd->bd", weights, emb)

    def call(self, inputs, training=False):
        history = inputs["history"]
        # History is right-aligned, so the last columns are the most recent items; only the window
        # the recency features need is looked up per position.
        window = max(self.recent, self.last_items, self.gru_window, self.min_gru_window, self.transformer_window,
                     self.max_history if self.attention else 0)
        mean, rows, slots = self._history_lookup(history, slots=window > 0)
        parts = [mean]
        if window:
            windows = {}

            def last(n):
                """(embeddings [B, n, D], mask [B, n, 1]) of the latest n positions, one lookup per n.
                Each part gathers its own window rather than slicing a wider one: a slice's gradient
                is a zero-filled copy of the whole tensor it was cut from (TF's StridedSliceGrad, ~5 %
                of the shipped ML-1M step in TF's profiler); a gather's is its own rows."""
                if n not in windows:
                    windows[n] = self._embed_window(rows, _last_columns(slots, n))
                return windows[n]

        if self.recent > 0:
            parts.append(self._masked_mean(*last(self.recent)))
            parts.append(ops.reshape(last(1)[0], [-1, self.dim]))  # the latest item
        if self.last_items > 0:
            # The last k items each in their own slot: the MLP sees their order.
            parts.append(ops.reshape(last(self.last_items)[0], [-1, self.last_items * self.dim]))
        if self.attention:
            parts.append(self._attention_pool(*last(self.max_history)))
        if self.gru_window:
            # Right-aligned padding sits before the items, so a masked GRU simply skips it.
            emb, mask = last(self.gru_window)
            parts.append(self.sequence(emb, mask=mask[..., 0] > 0))
        if self.min_gru_window:
            parts.append(self.min_gru(*last(self.min_gru_window)))
        if self.transformer_window:
            emb, mask = last(self.transformer_window)
            parts.append(self.encoder(emb, mask, training=training))
        for i, layer in enumerate(self.feature_embeddings):
            parts.append(layer(inputs["user_features"][:, i]))
        if self.example_age:
            parts.append(ops.cast(inputs["age"], "float32")[:, None])
        x = ops.concatenate(parts, axis=-1)
        for layer in self.mlp:
            x = layer(x)
            if self.drop is not None:
                x = self.drop(x, training=training)
        x = self.out(x)
        if self.normalize:
            x = tf.math.l2_normalize(x, axis=-1)
        # Dividing the query by the temperature divides u·v by it: the index then scores exactly
        # the training logits.
        return x / self.temperature

    def get_config(self):
        return {**super().get_config(), "num_items": self.num_items, "dim": self.dim, "hidden": self.hidden,
                "max_history": self.max_history, "feature_sizes": self.feature_sizes,
                "feature_dim": self.feature_dim, "recent": self.recent, "last_items": self.last_items,
                "attention": self.attention, "gru": self.gru_window, "min_gru": self.min_gru_window,
                "min_gru_heads": self.min_gru_heads,
                "transformer": self.transformer_window, "transformer_blocks": self.transformer_blocks,
                "transformer_heads": self.transformer_heads, "transformer_dropout": self.transformer_dropout,
                "example_age": self.example_age,
                "dropout": self.dropout_rate, "normalize": self.normalize, "temperature": self.temperature,
                "compute_dtype": self.compute_dtype_name}
