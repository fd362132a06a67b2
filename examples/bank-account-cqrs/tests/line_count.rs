//! Holds the reference domain to the line budget of issue 14, counted as the issue counts:
//! non-blank, non-comment lines (a comment line starts with `//`, doc comments included) of
//! the `cargo fmt`-formatted files. The domain is `src/lib.rs`, whole; event application is
//! the region of it between `// begin: event application` and `// end: event application`;
//! the four tests are `tests/scenarios.rs`, whole.

const DOMAIN: &str = include_str!("../src/lib.rs");
const TESTS: &str = include_str!("scenarios.rs");

fn counted(lines: &[&str]) -> usize {
    lines
        .iter()
        .map(|line| line.trim())
        .filter(|line| !line.is_empty() && !line.starts_with("//"))
        .count()
}

fn region<'a>(lines: &'a [&'a str], name: &str) -> (usize, usize) {
    let find = |marker: String| {
        lines
            .iter()
            .position(|line| line.trim() == marker)
            .unwrap_or_else(|| panic!("no `{marker}` in src/lib.rs"))
    };
    (
        find(format!("// begin: {name}")),
        find(format!("// end: {name}")),
    )
}

#[test]
fn the_reference_domain_stays_within_its_line_budget() {
    let lines: Vec<&str> = DOMAIN.lines().collect();
    let (apply_start, apply_end) = region(&lines, "event application");
    let domain = counted(&lines);
    let application = counted(&lines[apply_start..apply_end]);
    let tests = counted(&TESTS.lines().collect::<Vec<_>>());
    // Printed for the closing note: `cargo test -p bank-account-cqrs -- --nocapture`.
    eprintln!("domain {domain} (event application {application}), tests {tests}");
    assert!(
        domain <= 80,
        "the domain takes {domain} lines, the budget is 80"
    );
    assert!(
        application <= 10,
        "applying events takes {application} lines, the budget is 10"
    );
    assert!(
        tests <= 30,
        "the four tests take {tests} lines, the budget is 30"
    );
}
