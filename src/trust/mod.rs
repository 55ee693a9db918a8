pub mod buildinfo;
pub mod sbom;
