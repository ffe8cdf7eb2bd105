//! Typed identifiers, one per domain noun.
//!
//! Rooms are named by integrators (`RoomName`); participants, tracks and nodes get
//! identifiers minted by relais. Keeping them distinct types stops a track id from
//! being passed where a participant id is expected.

use std::fmt;

use rand::distributions::Alphanumeric;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Longest room name accepted, in bytes.
pub const MAX_ROOM_NAME_LEN: usize = 128;

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// A fresh random identifier with this type's prefix.
            pub fn random() -> Self {
                Self(format!("{}{}", $prefix, random_suffix()))
            }

            /// Wraps a value received from a peer or a test; no validation.
            pub fn from_string(value: String) -> Self {
                Self(value)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_id!(
    /// A participant's identifier within a room, unique per connection.
    ParticipantId,
    "PA_"
);
string_id!(
    /// A published track's identifier, unique within the node.
    TrackId,
    "TR_"
);
string_id!(
    /// A node of the cluster.
    NodeId,
    "ND_"
);

/// A room, named by whoever mints tokens for it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RoomName(String);

/// Why a room name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoomNameError {
    #[error("room name is empty")]
    Empty,
    #[error("room name is longer than {MAX_ROOM_NAME_LEN} bytes")]
    TooLong,
    #[error("room name may only hold letters, digits, '-', '_' and '.'")]
    BadCharacter,
}

impl RoomName {
    /// Checks a name: 1 to 128 ASCII letters, digits, `-`, `_` or `.`.
    pub fn parse(value: &str) -> Result<Self, RoomNameError> {
        if value.is_empty() {
            return Err(RoomNameError::Empty);
        }
        if value.len() > MAX_ROOM_NAME_LEN {
            return Err(RoomNameError::TooLong);
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        if !value.chars().all(allowed) {
            return Err(RoomNameError::BadCharacter);
        }
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn random_suffix() -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(12)
        .map(char::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_names_are_checked() {
        assert!(RoomName::parse("weekly-sync_2.0").is_ok());
        assert_eq!(RoomName::parse(""), Err(RoomNameError::Empty));
        assert_eq!(RoomName::parse("a b"), Err(RoomNameError::BadCharacter));
        assert_eq!(
            RoomName::parse(&"x".repeat(129)),
            Err(RoomNameError::TooLong)
        );
    }

    #[test]
    fn random_ids_carry_their_prefix() {
        let id = TrackId::random();
        assert!(id.as_str().starts_with("TR_"));
        assert_ne!(id, TrackId::random());
    }
}
