//! Corrupt stored records, end to end: the fault that makes them (`flip`, behind `kv chaos
//! corrupt`) and the background scrub that finds and repairs them (`scrub`). The repairs
//! themselves are the engines' (`ap::repair`, `cp::engine::repair`): this module only walks.

pub mod flip;
pub mod scrub;
