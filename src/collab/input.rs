//! Every text field a client sends, as a type that can only hold a valid
//! value. Each is parsed once, at the edge (a handler, the token check), and
//! carried inward as that type, so nothing deeper checks it again. A failed
//! parse is a `validation_error` whose message names the field and the rule.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::Error;

pub const MAX_TITLE_CHARS: usize = 200;
pub const MAX_CONTENT_CHARS: usize = 10_000;
pub const MAX_USER_ID_CHARS: usize = 128;
pub const MAX_IDEMPOTENCY_KEY_CHARS: usize = 128;

/// A user id (a token's `sub`): 1-128 characters of `[A-Za-z0-9._@-]`.
#[derive(
    Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(try_from = "String", into = "String")]
#[schema(pattern = "^[A-Za-z0-9._@-]{1,128}$")]
pub struct UserId(String);

impl UserId {
    pub fn parse(value: impl Into<String>) -> Result<Self, Error> {
        let value = value.into();
        let ok = !value.is_empty()
            && value.len() <= MAX_USER_ID_CHARS
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'));
        if ok {
            Ok(UserId(value))
        } else {
            Err(Error::Validation(format!(
                "user id must be 1-{MAX_USER_ID_CHARS} characters of A-Z a-z 0-9 . _ @ -"
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for UserId {
    type Error = Error;

    fn try_from(value: String) -> Result<Self, Error> {
        UserId::parse(value)
    }
}

impl From<UserId> for String {
    fn from(id: UserId) -> String {
        id.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for UserId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

/// A draft title: 1-200 characters once trimmed, no control characters.
/// Holds the trimmed text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DraftTitle(String);

impl DraftTitle {
    pub fn parse(value: &str) -> Result<Self, Error> {
        let trimmed = value.trim();
        if trimmed.is_empty() {
            return Err(Error::Validation("title must not be empty".into()));
        }
        if trimmed.chars().count() > MAX_TITLE_CHARS {
            return Err(Error::Validation(format!(
                "title must be at most {MAX_TITLE_CHARS} characters"
            )));
        }
        if trimmed.chars().any(char::is_control) {
            return Err(Error::Validation(
                "title must not contain control characters".into(),
            ));
        }
        Ok(DraftTitle(trimmed.to_owned()))
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// Segment content: 1-10,000 characters, kept exactly as sent, any
/// character but NUL (U+0000), which no Postgres text column can hold: it
/// is refused in both modes alike, so a client never sees them differ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentContent(String);

impl SegmentContent {
    pub fn parse(value: String) -> Result<Self, Error> {
        if value.is_empty() {
            return Err(Error::Validation("content must not be empty".into()));
        }
        if value.chars().count() > MAX_CONTENT_CHARS {
            return Err(Error::Validation(format!(
                "content must be at most {MAX_CONTENT_CHARS} characters"
            )));
        }
        if value.contains('\0') {
            return Err(Error::Validation(
                "content must not contain the NUL character (U+0000)".into(),
            ));
        }
        Ok(SegmentContent(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An idempotency key: 1-128 printable ASCII characters without spaces.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(try_from = "String", into = "String")]
#[schema(pattern = "^[!-~]{1,128}$")]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(value: impl Into<String>) -> Result<Self, Error> {
        let value = value.into();
        let ok = !value.is_empty()
            && value.len() <= MAX_IDEMPOTENCY_KEY_CHARS
            && value.bytes().all(|b| b.is_ascii_graphic());
        if ok {
            Ok(IdempotencyKey(value))
        } else {
            Err(Error::Validation(format!(
                "idempotency_key must be 1-{MAX_IDEMPOTENCY_KEY_CHARS} printable ASCII characters without spaces"
            )))
        }
    }

    /// The key given in the body or the `Idempotency-Key` header: either may
    /// be used, both must agree.
    pub fn pick(body: Option<String>, header: Option<String>) -> Result<Option<Self>, Error> {
        match (body, header) {
            (Some(b), Some(h)) if b != h => Err(Error::Validation(
                "idempotency_key in the body and the Idempotency-Key header differ".into(),
            )),
            (Some(key), _) | (None, Some(key)) => Ok(Some(IdempotencyKey::parse(key)?)),
            (None, None) => Ok(None),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for IdempotencyKey {
    type Error = Error;

    fn try_from(value: String) -> Result<Self, Error> {
        IdempotencyKey::parse(value)
    }
}

impl From<IdempotencyKey> for String {
    fn from(key: IdempotencyKey) -> String {
        key.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_follow_the_alphabet() {
        assert!(UserId::parse("alice@example.com").is_ok());
        assert!(UserId::parse("a.b_c-d").is_ok());
        assert!(UserId::parse("").is_err());
        assert!(UserId::parse("has space").is_err());
        assert!(UserId::parse("émile").is_err());
        assert!(UserId::parse("x".repeat(129)).is_err());
        assert!(UserId::parse("x".repeat(128)).is_ok());
    }

    #[test]
    fn user_ids_are_plain_strings_on_the_wire_and_parsed_when_read() {
        let id = UserId::parse("alice").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"alice\"");
        assert_eq!(serde_json::from_str::<UserId>("\"alice\"").unwrap(), id);
        assert!(serde_json::from_str::<UserId>("\"bad user\"").is_err());
    }

    #[test]
    fn titles_are_trimmed_and_bounded() {
        assert_eq!(DraftTitle::parse("  Plan  ").unwrap().into_string(), "Plan");
        assert!(DraftTitle::parse("   ").is_err());
        assert!(DraftTitle::parse(&"é".repeat(200)).is_ok());
        assert!(DraftTitle::parse(&"é".repeat(201)).is_err());
        assert!(DraftTitle::parse("a\u{0}b").is_err());
    }

    #[test]
    fn content_is_bounded_in_characters() {
        assert!(SegmentContent::parse(String::new()).is_err());
        assert!(SegmentContent::parse("ü".repeat(MAX_CONTENT_CHARS)).is_ok());
        assert!(SegmentContent::parse("ü".repeat(MAX_CONTENT_CHARS + 1)).is_err());
    }

    #[test]
    fn content_keeps_every_character_but_nul() {
        let text = "tab\tnewline\n\u{1}bell\u{7}\u{10FFFF}";
        assert_eq!(SegmentContent::parse(text.into()).unwrap().as_str(), text);
        assert!(SegmentContent::parse("a\u{0}b".into()).is_err());
    }

    #[test]
    fn idempotency_keys_from_body_and_header_must_agree() {
        let key = |k: &str| Some(IdempotencyKey::parse(k).unwrap());
        assert_eq!(
            IdempotencyKey::pick(Some("k1".into()), None).unwrap(),
            key("k1")
        );
        assert_eq!(
            IdempotencyKey::pick(None, Some("k2".into())).unwrap(),
            key("k2")
        );
        assert!(IdempotencyKey::pick(Some("a".into()), Some("b".into())).is_err());
        assert!(IdempotencyKey::pick(Some("has space".into()), None).is_err());
        assert_eq!(IdempotencyKey::pick(None, None).unwrap(), None);
    }
}
