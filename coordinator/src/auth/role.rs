//! Roles a bearer token carries, and what each may do.

use std::fmt;
use std::str::FromStr;

/// The role of a token (docs/security.md has the table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Submits, cancels, retries, drains, manages tokens, and reads everything.
    Operator,
    /// Reads campaigns, units, results and agents; changes nothing.
    Viewer,
    /// Speaks the agent protocol (`AgentService`) only.
    Agent,
}

impl Role {
    /// Every role, in the order docs list them.
    pub const ALL: [Role; 3] = [Role::Operator, Role::Viewer, Role::Agent];

    /// The name used on the command line, in the store and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Viewer => "viewer",
            Role::Agent => "agent",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name that is not one of [`Role::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role `{0}` (hint: use operator, viewer or agent)")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(text: &str) -> Result<Role, UnknownRole> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str().eq_ignore_ascii_case(text.trim()))
            .ok_or_else(|| UnknownRole(text.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        assert_eq!("Operator".parse::<Role>(), Ok(Role::Operator));
        let err = "admin".parse::<Role>().unwrap_err();
        assert!(err.to_string().contains("admin"), "{err}");
    }
}
