//! The schemas of a projection's generations and of its tenant rebuild's staging tables.

/// The schema prefix of projection `name`: `custom` cut to [`PREFIX_BYTES`], or the name made
/// an identifier. Two projections may share one (names that clean up alike, or the same custom
/// prefix): generations refuse that (`SchemaPrefixTaken`), staging schemas avoid it by a hash.
pub(super) fn prefix_of(name: &str, custom: Option<&str>) -> String {
    custom.map_or_else(|| schema_prefix(name), clip_prefix)
}

/// The schema of the staging tables of [`PgRebuild::rebuild_tenant`](super::PgRebuild::rebuild_tenant):
/// the prefix, then a hash of the exact projection name, so that two projections sharing a
/// prefix never drop or fill each other's (`<prefix>_tenant_<8 hex digits>`, at most 56 bytes).
pub(super) fn staging_schema(prefix: &str, name: &str) -> String {
    format!("{prefix}_tenant_{:08x}", fnv1a(name.as_bytes()))
}

/// 32-bit FNV-1a: stable across Rust versions and platforms (unlike `DefaultHasher`), as a
/// schema name must be from one run to the next.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |hash, &byte| {
        (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
    })
}

/// The default schema prefix of a projection: its name, lowercased, other characters than
/// letters, digits and `_` replaced by `_`, at most 40 characters.
fn schema_prefix(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(40)
        .collect()
}

/// A custom prefix cut to [`PREFIX_BYTES`] bytes (on a character boundary): PostgreSQL cuts
/// identifiers at 63 bytes without a word, and two generations' schemas must never meet.
fn clip_prefix(prefix: &str) -> String {
    let mut end = prefix.len().min(PREFIX_BYTES);
    while !prefix.is_char_boundary(end) {
        end -= 1;
    }
    prefix[..end].to_owned()
}

/// The longest prefix used: `_g<n>` and `_tenant_<hash>` then still fit PostgreSQL's 63-byte
/// identifiers.
const PREFIX_BYTES: usize = 40;

#[cfg(test)]
mod tests {
    use super::{clip_prefix, fnv1a, prefix_of, schema_prefix, staging_schema};

    #[test]
    fn schema_prefixes_are_plain_identifiers() {
        assert_eq!(schema_prefix("Order-Totals.v2"), "order_totals_v2");
        assert_eq!(schema_prefix(&"x".repeat(80)).len(), 40);
        assert_eq!(clip_prefix(&"y".repeat(80)).len(), 40);
        assert_eq!(clip_prefix(&"é".repeat(30)).len(), 40);
        assert_eq!(clip_prefix("short"), "short");
    }

    #[test]
    fn projections_sharing_a_prefix_stage_a_tenant_in_schemas_of_their_own() {
        // Names that clean up alike, names alike in their first 40 characters, and one
        // custom prefix for two projections.
        let long = "x".repeat(40);
        for (a, b, custom) in [
            ("orders-v2", "orders.v2", None),
            (&*format!("{long}-a"), &*format!("{long}-b"), None),
            ("orders", "invoices", Some("shared")),
        ] {
            let (pa, pb) = (prefix_of(a, custom), prefix_of(b, custom));
            assert_eq!(pa, pb, "{a} and {b} share a prefix");
            let (sa, sb) = (staging_schema(&pa, a), staging_schema(&pb, b));
            assert_ne!(sa, sb, "{a} and {b} stage apart");
            assert!(sa.starts_with(&format!("{pa}_tenant_")), "{sa}");
        }
        let longest = staging_schema(&prefix_of("", Some(&"z".repeat(99))), "p");
        assert!(longest.len() <= 63, "{longest}");
        // The published FNV-1a test vector: the name never changes from one build to another.
        assert_eq!(fnv1a(b"a"), 0xe40c_292c);
    }
}
