//! hwdrv (being written)
