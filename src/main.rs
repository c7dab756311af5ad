//! The `runner-storage` binary.

fn main() {}
