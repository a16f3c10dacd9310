// Removed once the part has real sources (meson needs one source per library).
