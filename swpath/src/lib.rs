//! swpath (being written)
