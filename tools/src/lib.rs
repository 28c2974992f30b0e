//! vdpad daemon wiring (being written)
