"""Training pieces: candidate samplers, losses, the tf.data input pipeline and the train step."""
