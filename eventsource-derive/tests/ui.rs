//! Compile-time behaviour of the derives: `pass/` must build and run, `fail/` must fail with
//! the error recorded in the matching `.stderr`.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui/pass/*.rs");
    cases.compile_fail("tests/ui/fail/*.rs");
}
