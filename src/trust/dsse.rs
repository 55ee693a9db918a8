//! DSSE v1 (Dead Simple Signing Envelope): the pre-authentication encoding and the envelope
//! that carries a provenance statement (SPEC §18).
//!
//! A DSSE signature covers `PAE(payloadType, payload)`, never the JSON around it, so the type is
//! bound into what is signed.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::{json, Value};

use super::keys::SigningKey;

/// The media type of an envelope.
pub const MEDIA_TYPE: &str = "application/vnd.dsse.envelope.v1+json";
/// The payload type of an in-toto statement.
pub const IN_TOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

/// DSSE v1's pre-authentication encoding:
/// `"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`, where LEN is the byte length in ASCII
/// decimal without leading zeros and SP one space.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let head = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        payload.len()
    );
    let mut out = Vec::with_capacity(head.len() + payload.len());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(payload);
    out
}

/// `{"payloadType", "payload": base64, "signatures": [{"keyid", "sig": base64}]}`, signed with
/// `key`'s raw Ed25519 signature over the PAE; `keyid` is the minisign key id.
pub fn envelope(payload_type: &str, payload: &[u8], key: &SigningKey) -> Value {
    let sig = key.sign_raw(&pae(payload_type, payload));
    json!({
        "payloadType": payload_type,
        "payload": B64.encode(payload),
        "signatures": [{"keyid": key.key_id(), "sig": B64.encode(sig)}],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_matches_the_spec_vector() {
        // The worked example in DSSE's protocol.md.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
    }

    #[test]
    fn pae_counts_bytes_not_characters_and_keeps_empty_fields() {
        assert_eq!(pae("", b""), b"DSSEv1 0  0 ".to_vec());
        assert_eq!(
            pae("é", b"\x00\xff"),
            b"DSSEv1 2 \xc3\xa9 2 \x00\xff".to_vec()
        );
    }

    #[test]
    fn envelope_signature_verifies_over_the_pae_only() {
        let key = SigningKey::generate().expect("generate");
        let env = envelope(IN_TOTO_PAYLOAD_TYPE, b"{\"a\":1}", &key);
        assert_eq!(env["payloadType"], IN_TOTO_PAYLOAD_TYPE);
        let payload = B64
            .decode(env["payload"].as_str().expect("payload"))
            .expect("b64");
        assert_eq!(payload, b"{\"a\":1}");
        let sigs = env["signatures"].as_array().expect("signatures");
        assert_eq!(sigs.len(), 1);
        assert_eq!(sigs[0]["keyid"], key.key_id());
        let sig = B64
            .decode(sigs[0]["sig"].as_str().expect("sig"))
            .expect("b64");
        let public = key.public();
        assert!(public.verify_raw(&pae(IN_TOTO_PAYLOAD_TYPE, &payload), &sig));
        assert!(!public.verify_raw(&payload, &sig));
        assert!(!public.verify_raw(&pae("application/json", &payload), &sig));
    }
}
