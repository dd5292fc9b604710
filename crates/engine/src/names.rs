//! Which topic and consumer-group names are allowed: Kafka's rules, so any name a Kafka client
//! can use works in Sluice and the other way round, plus one Sluice rule: names starting with
//! `__` belong to internal topics (such as `__topics`), so users cannot create or shadow them.
//!
//! The rules: 1 to 249 bytes ([`TOPIC_NAME_BYTES_MAX`], [`GROUP_NAME_BYTES_MAX`]) of ASCII
//! letters, digits, `.`, `_` and `-`, and not `.` or `..`. Topic names become directory names,
//! which is why path separators, `.` and `..` must never get through.
//!
//! Checks run in a fixed order (empty, `.`/`..`, length, characters, reserved prefix), so a
//! name breaking several rules always gets the same error, and an error that quotes the name
//! only ever quotes one already known to be at most the length limit.
//!
//! Deliberately not here: Kafka's warning about names that differ only in `.` versus `_`
//! (they collide in Kafka's metric names, which Sluice does not share), and whether a name
//! exists or is free, which is the engine's business.

/// Longest topic name, in bytes; Kafka's limit, so Kafka clients' topics always fit.
pub const TOPIC_NAME_BYTES_MAX: usize = 249;

/// Longest consumer-group name, in bytes; the same as topics, for one rule to remember.
pub const GROUP_NAME_BYTES_MAX: usize = 249;

/// Prefix reserved for Sluice's internal topics.
pub const INTERNAL_TOPIC_PREFIX: &str = "__";

/// Names every error message uses for the allowed alphabet, kept in one place with the check.
const ALLOWED_CHARACTERS: &str = "ASCII letters, digits, '.', '_' and '-'";

/// What kind of name is being checked, as it appears in error messages.
const TOPIC: &str = "topic";
/// See [`TOPIC`].
const GROUP: &str = "group";

// The prefix itself must obey the character rules, or no internal name could be valid.
const _: () = assert!(INTERNAL_TOPIC_PREFIX.len() < TOPIC_NAME_BYTES_MAX);

/// A topic or group name broke a rule. `kind` is `"topic"` or `"group"`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is the empty string.
    #[error("{kind} name is empty; it needs at least one character")]
    Empty {
        /// `"topic"` or `"group"`.
        kind: &'static str,
    },
    /// The name is longer than the limit.
    #[error("{kind} name is {length} bytes; the limit is {max}")]
    TooLong {
        /// `"topic"` or `"group"`.
        kind: &'static str,
        /// The name's length, in bytes.
        length: usize,
        /// The limit, in bytes.
        max: usize,
    },
    /// The name holds a character outside the allowed alphabet.
    #[error("{kind} name {name:?} has {character:?} at position {position}; allowed are {ALLOWED_CHARACTERS}")]
    BadCharacter {
        /// `"topic"` or `"group"`.
        kind: &'static str,
        /// The whole name (at most the length limit, which is checked first).
        name: String,
        /// The first character not allowed.
        character: char,
        /// Where it is, counted from 0. Every character before it is ASCII, so this is both
        /// the byte offset and the character index.
        position: usize,
    },
    /// A user topic name starts with the prefix reserved for internal topics.
    #[error("topic name {name:?} starts with \"__\", which is reserved for internal topics")]
    Reserved {
        /// The name.
        name: String,
    },
    /// An internal topic name lacks the reserved prefix (a bug in Sluice, reported rather than
    /// panicking because the name may come from stored metadata).
    #[error("internal topic name {name:?} must start with \"__\"")]
    NotInternal {
        /// The name.
        name: String,
    },
    /// The name is `.` or `..`, which would be a path, not a directory of its own.
    #[error("{kind} name cannot be \".\" or \"..\"")]
    Dots {
        /// `"topic"` or `"group"`.
        kind: &'static str,
    },
}

/// Checks a user topic name.
///
/// # Errors
///
/// [`NameError::Empty`], [`NameError::Dots`], [`NameError::TooLong`] (over
/// [`TOPIC_NAME_BYTES_MAX`] bytes), [`NameError::BadCharacter`], or [`NameError::Reserved`] if
/// it starts with `__`.
pub fn validate_topic_name(name: &str) -> Result<(), NameError> {
    validate(name, TOPIC, TOPIC_NAME_BYTES_MAX)?;
    if name.starts_with(INTERNAL_TOPIC_PREFIX) {
        return Err(NameError::Reserved { name: name.to_owned() });
    }
    Ok(())
}

/// Checks an internal topic name: the user rules, except that it must start with `__`.
///
/// # Errors
///
/// [`NameError::Empty`], [`NameError::Dots`], [`NameError::TooLong`] (over
/// [`TOPIC_NAME_BYTES_MAX`] bytes), [`NameError::BadCharacter`], or [`NameError::NotInternal`]
/// if it does not start with `__`.
pub fn validate_internal_topic_name(name: &str) -> Result<(), NameError> {
    validate(name, TOPIC, TOPIC_NAME_BYTES_MAX)?;
    if !name.starts_with(INTERNAL_TOPIC_PREFIX) {
        return Err(NameError::NotInternal { name: name.to_owned() });
    }
    Ok(())
}

/// Checks a consumer-group name. No prefix is reserved: groups have no internal namespace.
///
/// # Errors
///
/// [`NameError::Empty`], [`NameError::Dots`], [`NameError::TooLong`] (over
/// [`GROUP_NAME_BYTES_MAX`] bytes), or [`NameError::BadCharacter`].
pub fn validate_group_name(name: &str) -> Result<(), NameError> {
    validate(name, GROUP, GROUP_NAME_BYTES_MAX)
}

/// The rules topics and groups share.
fn validate(name: &str, kind: &'static str, bytes_max: usize) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { kind });
    }
    if name == "." || name == ".." {
        return Err(NameError::Dots { kind });
    }
    if name.len() > bytes_max {
        return Err(NameError::TooLong { kind, length: name.len(), max: bytes_max });
    }
    if let Some((position, character)) = name.char_indices().find(|(_, c)| !is_allowed(*c)) {
        return Err(NameError::BadCharacter { kind, name: name.to_owned(), character, position });
    }
    Ok(())
}

/// Kafka's legal characters, `[a-zA-Z0-9._-]`.
fn is_allowed(character: char) -> bool {
    character.is_ascii_alphanumeric() || matches!(character, '.' | '_' | '-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ordinary_names_are_accepted() {
        // Goal: the names people actually use pass, including every allowed punctuation mark.
        for name in ["orders", "Orders.v2", "a", "x_y-z.0", "...", "_private", "-", "a__b"] {
            assert_eq!(validate_topic_name(name), Ok(()), "topic {name:?}");
            assert_eq!(validate_group_name(name), Ok(()), "group {name:?}");
        }
    }

    #[test]
    fn empty_names_are_refused() {
        // Goal: the empty string is never a name.
        assert_eq!(validate_topic_name(""), Err(NameError::Empty { kind: "topic" }));
        assert_eq!(validate_internal_topic_name(""), Err(NameError::Empty { kind: "topic" }));
        assert_eq!(validate_group_name(""), Err(NameError::Empty { kind: "group" }));
    }

    #[test]
    fn dot_and_dot_dot_are_refused() {
        // Goal: names that are path components of their own never become directory names.
        for name in [".", ".."] {
            assert_eq!(validate_topic_name(name), Err(NameError::Dots { kind: "topic" }));
            assert_eq!(validate_group_name(name), Err(NameError::Dots { kind: "group" }));
        }
        assert_eq!(validate_topic_name("..."), Ok(()));
    }

    #[test]
    fn length_limit_is_inclusive_and_in_bytes() {
        // Goal: exactly the limit passes, one byte more fails, for topics, internal topics, groups.
        let at_limit = "a".repeat(TOPIC_NAME_BYTES_MAX);
        let over = "a".repeat(TOPIC_NAME_BYTES_MAX + 1);
        assert_eq!(validate_topic_name(&at_limit), Ok(()));
        assert_eq!(
            validate_topic_name(&over),
            Err(NameError::TooLong { kind: "topic", length: 250, max: TOPIC_NAME_BYTES_MAX })
        );
        let internal_over = format!("__{}", "a".repeat(TOPIC_NAME_BYTES_MAX - 1));
        assert_eq!(
            validate_internal_topic_name(&internal_over),
            Err(NameError::TooLong { kind: "topic", length: 250, max: TOPIC_NAME_BYTES_MAX })
        );
        let group_at_limit = "g".repeat(GROUP_NAME_BYTES_MAX);
        let group_over = "g".repeat(GROUP_NAME_BYTES_MAX + 1);
        assert_eq!(validate_group_name(&group_at_limit), Ok(()));
        assert_eq!(
            validate_group_name(&group_over),
            Err(NameError::TooLong { kind: "group", length: 250, max: GROUP_NAME_BYTES_MAX })
        );
    }

    #[test]
    fn length_counts_bytes_not_characters() {
        // Goal: a multi-byte name is measured in bytes (125 'é' are 250 bytes), and the length
        // rule wins over the character rule so a huge name is never echoed back.
        let name = "é".repeat(125);
        assert_eq!(
            validate_topic_name(&name),
            Err(NameError::TooLong { kind: "topic", length: 250, max: TOPIC_NAME_BYTES_MAX })
        );
    }

    #[test]
    fn characters_outside_the_alphabet_are_refused_with_their_position() {
        // Goal: the first bad character and where it is are reported, for each kind of bad input.
        let cases = [
            ("a b", ' ', 1),
            ("orders/2024", '/', 6),
            ("../etc", '/', 2),
            ("tab\there", '\t', 3),
            ("café", 'é', 3),
            ("emoji🙂x", '🙂', 5),
            ("nul\0", '\0', 3),
            ("colon:", ':', 5),
        ];
        for (name, character, position) in cases {
            let expected =
                |kind| NameError::BadCharacter { kind, name: name.to_owned(), character, position };
            assert_eq!(validate_topic_name(name), Err(expected("topic")), "topic {name:?}");
            assert_eq!(validate_group_name(name), Err(expected("group")), "group {name:?}");
        }
    }

    #[test]
    fn user_topics_may_not_use_the_internal_prefix() {
        // Goal: users cannot create or shadow internal topics such as __topics.
        for name in ["__topics", "__", "__consumer_offsets"] {
            assert_eq!(
                validate_topic_name(name),
                Err(NameError::Reserved { name: name.to_owned() })
            );
        }
        assert_eq!(validate_topic_name("_single"), Ok(()));
    }

    #[test]
    fn internal_topics_need_the_prefix_and_the_usual_rules() {
        // Goal: internal names are the reserved ones, and are otherwise held to the same rules.
        assert_eq!(validate_internal_topic_name("__topics"), Ok(()));
        assert_eq!(validate_internal_topic_name("__"), Ok(()));
        assert_eq!(
            validate_internal_topic_name("topics"),
            Err(NameError::NotInternal { name: "topics".to_owned() })
        );
        assert_eq!(
            validate_internal_topic_name("__bad name"),
            Err(NameError::BadCharacter {
                kind: "topic",
                name: "__bad name".to_owned(),
                character: ' ',
                position: 5
            })
        );
    }

    #[test]
    fn groups_have_no_reserved_prefix() {
        // Goal: the "__" rule is for topics only.
        assert_eq!(validate_group_name("__group"), Ok(()));
    }

    #[test]
    fn messages_state_the_rule() {
        // Goal: an error tells the user what was wrong and what is allowed.
        let message = |result: Result<(), NameError>| result.unwrap_err().to_string();
        assert_eq!(
            message(validate_topic_name("a b")),
            "topic name \"a b\" has ' ' at position 1; allowed are ASCII letters, digits, '.', '_' and '-'"
        );
        assert_eq!(
            message(validate_topic_name(&"x".repeat(300))),
            "topic name is 300 bytes; the limit is 249"
        );
        assert_eq!(
            message(validate_group_name("")),
            "group name is empty; it needs at least one character"
        );
        assert_eq!(message(validate_group_name("..")), "group name cannot be \".\" or \"..\"");
        assert_eq!(
            message(validate_topic_name("__topics")),
            "topic name \"__topics\" starts with \"__\", which is reserved for internal topics"
        );
        assert_eq!(
            message(validate_internal_topic_name("topics")),
            "internal topic name \"topics\" must start with \"__\""
        );
        // Control characters are escaped, so a hostile name cannot forge log lines.
        assert_eq!(
            message(validate_topic_name("a\nb")),
            "topic name \"a\\nb\" has '\\n' at position 1; allowed are ASCII letters, digits, '.', '_' and '-'"
        );
    }

    /// Names built only from the allowed alphabet, 1 to 249 bytes.
    fn allowed_name() -> impl Strategy<Value = String> {
        proptest::string::string_regex("[a-zA-Z0-9._-]{1,249}")
            .expect("the pattern is a valid regex")
    }

    proptest! {
        #[test]
        fn every_name_from_the_alphabet_is_accepted(name in allowed_name()) {
            // Goal: the rules refuse nothing beyond what they document.
            prop_assume!(!name.starts_with(INTERNAL_TOPIC_PREFIX) && name != "." && name != "..");
            prop_assert_eq!(validate_topic_name(&name), Ok(()));
            prop_assert_eq!(validate_group_name(&name), Ok(()));
        }

        #[test]
        fn one_bad_character_is_always_found(
            name in allowed_name(),
            index in any::<prop::sample::Index>(),
            bad in any::<char>().prop_filter("outside the alphabet", |c| !is_allowed(*c)),
        ) {
            // Goal: a single bad character anywhere is caught and located, if length allows.
            let position = index.index(name.len());
            let mut bad_name = name.clone();
            bad_name.replace_range(position..=position, &bad.to_string());
            prop_assume!(bad_name.len() <= TOPIC_NAME_BYTES_MAX);
            prop_assert_eq!(
                validate_group_name(&bad_name),
                Err(NameError::BadCharacter {
                    kind: "group",
                    name: bad_name.clone(),
                    character: bad,
                    position,
                })
            );
        }
    }
}
