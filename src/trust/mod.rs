pub mod buildinfo;
pub mod dsse;
pub mod keys;
pub mod provenance;
pub mod sbom;
pub mod service;
