//! vdpa (being written)
