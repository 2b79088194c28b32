//! `schema.graphql` must match the SDL the code generates.

#[test]
fn checked_in_schema_matches_the_code() {
    let generated = agentplane::graphql::sdl();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql");
    if std::env::var("UPDATE_SCHEMA").is_ok_and(|v| v == "1") {
        std::fs::write(path, &generated).expect("write schema.graphql");
        return;
    }
    let on_disk = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        on_disk == generated,
        "schema.graphql is stale: run `cargo run -- schema > schema.graphql` (or UPDATE_SCHEMA=1 with the tests)"
    );
}

#[test]
fn readme_prints_the_permission_matrix_from_the_code() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    assert!(
        readme.contains(&agentplane::rbac::matrix_markdown()),
        "README's permission matrix is stale: paste `agentplane admin permissions`"
    );
}
