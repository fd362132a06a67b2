//! Tokens: which tenant a connection belongs to.
//!
//! The server is given a fixed map of bearer tokens to tenants at startup. A client presents its
//! token as `Authorization: Bearer <token>` or, where it cannot set headers (a browser's
//! `EventSource` or `WebSocket`), as `?token=<token>`. The token alone decides the tenant; an
//! unknown or missing token is refused with 401.

use axum::http::{HeaderMap, header};
use eventsource_core::TenantId;

use crate::error::PushError;

/// The shortest token accepted, so that a guessable one cannot be configured by mistake.
pub const MIN_TOKEN_LEN: usize = 16;

/// The token → tenant map.
#[derive(Clone, Default)]
pub struct Tokens {
    entries: Vec<(String, TenantId)>,
}

impl std::fmt::Debug for Tokens {
    // Never print the tokens themselves.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("tenants", &self.tenants())
            .finish_non_exhaustive()
    }
}

/// Why a token list does not parse.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokensError {
    /// An entry is not `<token>=<tenant>`.
    #[error("token entry {0} is not `<token>=<tenant>`")]
    Malformed(usize),
    /// A token is shorter than [`MIN_TOKEN_LEN`].
    #[error("token entry {0} is shorter than {MIN_TOKEN_LEN} characters")]
    TooShort(usize),
    /// A token appears twice.
    #[error("token entry {0} repeats an earlier token")]
    Duplicate(usize),
}

impl Tokens {
    /// No tokens: every connection is refused.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `token` for `tenant`.
    pub fn with(mut self, token: impl Into<String>, tenant: TenantId) -> Result<Self, TokensError> {
        let token = token.into();
        let entry = self.entries.len() + 1;
        if token.len() < MIN_TOKEN_LEN {
            return Err(TokensError::TooShort(entry));
        }
        if self.entries.iter().any(|(t, _)| *t == token) {
            return Err(TokensError::Duplicate(entry));
        }
        self.entries.push((token, tenant));
        Ok(self)
    }

    /// Parses `token=tenant,token=tenant,…` (the `LIVE_PUSH_TOKENS` variable of the example).
    ///
    /// ```
    /// # use live_push::Tokens;
    /// let tokens = Tokens::parse("0123456789abcdef-a=acme,0123456789abcdef-b=globex")?;
    /// assert_eq!(tokens.tenant_of("0123456789abcdef-b").map(|t| t.to_string()).as_deref(), Some("globex"));
    /// assert!(tokens.tenant_of("guess").is_none());
    /// # Ok::<(), live_push::auth::TokensError>(())
    /// ```
    pub fn parse(list: &str) -> Result<Self, TokensError> {
        let mut tokens = Self::new();
        for (i, entry) in list.split(',').map(str::trim).enumerate() {
            if entry.is_empty() {
                continue;
            }
            let (token, tenant) = entry
                .split_once('=')
                .filter(|(t, n)| !t.is_empty() && !n.is_empty())
                .ok_or(TokensError::Malformed(i + 1))?;
            tokens = tokens.with(token, TenantId::new(tenant))?;
        }
        Ok(tokens)
    }

    /// The tenant of `token`, if it is known.
    ///
    /// Compares against every token in time independent of where they differ, so response
    /// times do not reveal a token's prefix.
    #[must_use]
    pub fn tenant_of(&self, token: &str) -> Option<&TenantId> {
        let mut found = None;
        for (known, tenant) in &self.entries {
            if constant_time_eq(known.as_bytes(), token.as_bytes()) {
                found = Some(tenant);
            }
        }
        found
    }

    /// The first token of `tenant`, if it has one (to print a link to the page).
    #[must_use]
    pub fn token_of(&self, tenant: &TenantId) -> Option<&str> {
        self.entries
            .iter()
            .find(|(_, t)| t == tenant)
            .map(|(token, _)| token.as_str())
    }

    /// Every tenant with a token, each once, in the order given.
    #[must_use]
    pub fn tenants(&self) -> Vec<TenantId> {
        let mut tenants: Vec<TenantId> = Vec::new();
        for (_, tenant) in &self.entries {
            if !tenants.contains(tenant) {
                tenants.push(tenant.clone());
            }
        }
        tenants
    }

    /// The tenant of a request: its bearer token, else its `token` query parameter.
    pub(crate) fn authenticate(
        &self,
        headers: &HeaderMap,
        query_token: Option<&str>,
    ) -> Result<TenantId, PushError> {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        bearer
            .or(query_token)
            .and_then(|token| self.tenant_of(token.trim()))
            .cloned()
            .ok_or(PushError::Unauthorized)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_short_malformed_and_repeated_tokens() {
        assert!(matches!(
            Tokens::parse("short=a"),
            Err(TokensError::TooShort(1))
        ));
        assert!(matches!(
            Tokens::parse("0123456789abcdefgh"),
            Err(TokensError::Malformed(1))
        ));
        assert!(matches!(
            Tokens::parse("0123456789abcdefgh=a,0123456789abcdefgh=b"),
            Err(TokensError::Duplicate(2))
        ));
    }

    #[test]
    fn a_token_decides_the_tenant() {
        let tokens = Tokens::parse("0123456789abcdef-a=acme, 0123456789abcdef-b=globex").unwrap();
        assert_eq!(
            tokens.tenant_of("0123456789abcdef-a"),
            Some(&TenantId::new("acme"))
        );
        assert_eq!(tokens.tenant_of("0123456789abcdef-"), None);
        assert_eq!(tokens.tenants().len(), 2);
    }
}
