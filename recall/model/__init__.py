"""The two-tower model: `UserTower` (query side) and `ItemTower` (the softmax's weights and biases)."""

from recall.model.towers import ItemTower, UserTower

__all__ = ["ItemTower", "UserTower"]
