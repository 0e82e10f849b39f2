//! Criterion benches for sync_to_async (filled in below).
fn main() {}
