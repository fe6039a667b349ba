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

from recall.model.encoders import PositionView, SequenceView, build_encoder


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


class UserTower(keras.layers.Layer):
    """History encoders + user-feature embeddings + example age → ReLU MLP → query `[.., D]`.

    Two forms of one function (recall/model/encoders/base.py):

    call(inputs)    per position; inputs:
      history        int32 [B, M]    internal ids, right-aligned, < 0 = padding (M any width; the latest
                                     model.max_history count)
      age            float32 [B]     example age (0 at serving time); ignored unless example_age
      user_features  int32 [B, F]    per-feature codes, 0 = unknown
      → [B, D]
    causal(inputs)  per chunk of a user's sequence; inputs:
      items          int32 [C, S]    the chunk's columns (context + L), < 0 = padding
      age            float32 [C, L]  example age of each labelled position
      user_features  int32 [C, F]
      labelled       bool [C, L]     which of the last L columns are training examples
      → [R, D], the queries of the R labelled positions in row-major order, each from the items before it

    `history`: the encoders, as `model.history` entries (dicts, e.g. {"kind": "gru", "window": 20}),
    their outputs concatenated in that order before the features and the age.
    """

    def __init__(
        self,
        num_items: int,
        dim: int,
        hidden: list[int],
        max_history: int,
        history: list[dict] | None = None,
        feature_sizes: list[int] | None = None,
        feature_dim: int = 16,
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
        self.history = [dict(h) for h in (history or [{"kind": "mean"}])]
        self.feature_sizes = list(feature_sizes or [])
        self.feature_dim = feature_dim
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
        self.encoders = [build_encoder(spec, dim, max_history, compute_dtype, name=f"history_{i}_{spec['kind']}")
                         for i, spec in enumerate(self.history)]
        self.feature_embeddings = [
            keras.layers.Embedding(size + 1, feature_dim, name=f"feature_{i}")
            for i, size in enumerate(self.feature_sizes)
        ]
        self.mlp = [keras.layers.Dense(width, activation="relu", name=f"hidden_{i}", dtype=policy)
                    for i, width in enumerate(self.hidden)]
        # tf.train.Checkpoint does not look inside Keras 3's tracked lists (keras-team/keras#18398):
        # without an attribute of their own these layers' weights are missing from every checkpoint.
        for layer in [*self.encoders, *self.feature_embeddings, *self.mlp]:
            setattr(self, layer.name, layer)
        self.drop = keras.layers.Dropout(dropout, dtype=policy) if dropout > 0 else None
        # float32 even under bfloat16: the query vector keeps float32 precision for the index's ranking
        # (the layer is 1/20 of the shipped tower's matmul work).
        self.out = keras.layers.Dense(dim, name="output")

    @property
    def exact_causal(self) -> bool:
        """True when the causal form equals the per-position one for every encoder (no running GRU)."""
        return all(e.exact for e in self.encoders)

    @property
    def context(self) -> int:
        """Items a chunk needs before its first labelled position: max_history (what a query may read)."""
        return self.max_history

    def _history_table(self):
        """The history table as its backing `tf.Variable` (gathers are sparse reads; see weights_and_biases)."""
        return _backing(self.shared_items.embeddings if self.shared_items is not None else self.history_embeddings)

    def _lookup(self, ids):
        """The distinct items of `ids` int [B, M], looked up once for every encoder.

        ids → (positions int64 [nnz, 2] of the items, slot int32 [nnz] into rows, rows `[R + 1, D]`: the
        R distinct items and a zero row last, which padding reads). The encoders read these rows, so the
        table's gradient is one row per distinct item — summed in the `[R, D]` rows first — not one per
        (row, position): the gather-and-mask form costs B·M gradient rows that the optimizer has to
        aggregate, the step's largest cost.
        """
        positions = tf.where(ids >= 0)  # [nnz, 2], row-major, so segment ids are sorted
        distinct, slot = tf.unique(tf.gather_nd(ids, positions))
        rows = tf.gather(self._history_table(), distinct)
        # The zero row last (rows may be empty: a batch of empty histories).
        return positions, slot, tf.concat([rows, tf.zeros([1, self.dim], rows.dtype)], axis=0)

    def _history_lookup(self, history, slots: bool = True):
        """history int [B, M] → (mean `[B, D]` of each row's items (zeros for an empty history), rows
        `[R + 1, D]` (zero row last), slots int32 `[B, M]`: each position's index into rows, −1 at padding;
        None when `slots` is false — no encoder reads a window)."""
        positions, slot, rows = self._lookup(history)
        mean = tf.sparse.segment_mean(rows[:-1], slot, tf.cast(positions[:, 0], tf.int32),
                                      num_segments=tf.shape(history)[0])
        if not slots:
            return mean, rows, None
        return mean, rows, tf.tensor_scatter_nd_update(tf.fill(tf.shape(history), -1), positions, slot)

    def _head(self, parts, features, age, training):
        """Concatenated encoder outputs `[..., P]` + feature embeddings + age → MLP → query `[..., D]`."""
        for i, layer in enumerate(self.feature_embeddings):
            parts.append(layer(features[..., i]))
        if self.example_age:
            parts.append(ops.cast(age, "float32")[..., None])
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

    def call(self, inputs, training=False):
        history = inputs["history"]
        if history.shape[1] is not None and history.shape[1] > self.max_history:
            history = history[:, -self.max_history:]  # the latest max_history items, as in training
        view = PositionView(*self._history_lookup(history, slots=any(e.reads_window for e in self.encoders)))
        parts = [enc.per_position(view, training=training) for enc in self.encoders]
        return self._head(parts, inputs["user_features"], inputs["age"], training)

    def causal(self, inputs, training=False):
        items, labelled = inputs["items"], inputs["labelled"]
        length = labelled.shape[1]
        positions, slot, rows = self._lookup(items)
        slots = tf.tensor_scatter_nd_update(tf.fill(tf.shape(items), tf.shape(rows)[0] - 1), positions, slot)
        emb = tf.gather(rows, slots)  # [C, S, D], zeros at padding
        view = SequenceView(emb, ops.cast(items >= 0, "float32")[..., None], length)
        parts = [enc.causal(view, training=training) for enc in self.encoders]  # each [C, L, width]
        # Only the labelled positions go through the MLP (a user's last chunk is partly empty).
        where = tf.where(labelled)  # [R, 2]
        parts = [tf.gather_nd(p, where) for p in parts]
        features = tf.gather(inputs["user_features"], where[:, 0])
        return self._head(parts, features, tf.gather_nd(inputs["age"], where), training)

    def get_config(self):
        return {**super().get_config(), "num_items": self.num_items, "dim": self.dim, "hidden": self.hidden,
                "max_history": self.max_history, "history": self.history, "feature_sizes": self.feature_sizes,
                "feature_dim": self.feature_dim, "example_age": self.example_age,
                "dropout": self.dropout_rate, "normalize": self.normalize, "temperature": self.temperature,
                "compute_dtype": self.compute_dtype_name}
