//! Criterion benches for async_to_sync (filled in below).
fn main() {}
