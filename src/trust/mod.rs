pub mod dsse;
pub mod keys;
pub mod provenance;
pub mod service;
