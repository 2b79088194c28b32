//! Cross-backend column types that live in one place: typed UUIDv7 ids stored as `TEXT`
//! (identical on SQLite and PostgreSQL), and UTC timestamps truncated to microseconds so
//! both engines round-trip them exactly.

use chrono::{DateTime, NaiveDateTime, SubsecRound, Utc};

/// Declares a typed id: a UUIDv7 newtype stored as `Text` on both backends.
#[macro_export]
macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
            diesel::expression::AsExpression, diesel::deserialize::FromSqlRow,
            serde::Serialize, serde::Deserialize,
        )]
        #[diesel(sql_type = diesel::sql_types::Text)]
        pub struct $name(pub uuid::Uuid);

        impl $name {
            /// A fresh, time-ordered id.
            pub fn new() -> Self {
                Self(uuid::Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }

        impl diesel::serialize::ToSql<diesel::sql_types::Text, diesel::pg::Pg> for $name {
            fn to_sql<'b>(
                &'b self,
                out: &mut diesel::serialize::Output<'b, '_, diesel::pg::Pg>,
            ) -> diesel::serialize::Result {
                use std::io::Write as _;
                write!(out, "{}", self.0.hyphenated())?;
                Ok(diesel::serialize::IsNull::No)
            }
        }

        impl diesel::serialize::ToSql<diesel::sql_types::Text, diesel::sqlite::Sqlite> for $name {
            fn to_sql<'b>(
                &'b self,
                out: &mut diesel::serialize::Output<'b, '_, diesel::sqlite::Sqlite>,
            ) -> diesel::serialize::Result {
                out.set_value(self.0.hyphenated().to_string());
                Ok(diesel::serialize::IsNull::No)
            }
        }

        impl<DB> diesel::deserialize::FromSql<diesel::sql_types::Text, DB> for $name
        where
            DB: diesel::backend::Backend,
            String: diesel::deserialize::FromSql<diesel::sql_types::Text, DB>,
        {
            fn from_sql(bytes: DB::RawValue<'_>) -> diesel::deserialize::Result<Self> {
                let s = String::from_sql(bytes)?;
                Ok(Self(uuid::Uuid::parse_str(&s)?))
            }
        }
    };
}

// The ids of every domain live here, below the domains, so any layer can name them
// without depending on the domain that owns the table.
crate::id_type!(
    /// Identifies a team.
    TeamId
);
crate::id_type!(
    /// Identifies a tenant (organization).
    TenantId
);
crate::id_type!(
    /// Identifies a user.
    UserId
);
crate::id_type!(
    /// Identifies a custom role.
    RoleId
);
crate::id_type!(
    /// Identifies a session (a refresh-token family).
    SessionId
);
crate::id_type!(
    /// Identifies an API key.
    ApiKeyId
);
crate::id_type!(
    /// Identifies a workflow.
    WorkflowId
);
crate::id_type!(
    /// Identifies a published workflow version.
    WorkflowVersionId
);
crate::id_type!(
    /// Identifies a secret.
    SecretId
);
crate::id_type!(
    /// Identifies an execution.
    ExecutionId
);
crate::id_type!(
    /// Identifies one step record of an execution.
    StepRunId
);
crate::id_type!(
    /// Identifies a schedule.
    ScheduleId
);

/// Truncates to the microsecond precision PostgreSQL keeps, as a naive UTC value.
pub fn db_time(t: DateTime<Utc>) -> NaiveDateTime {
    t.trunc_subsecs(6).naive_utc()
}

/// Reads a stored naive timestamp back as UTC.
pub fn utc(t: NaiveDateTime) -> DateTime<Utc> {
    t.and_utc()
}

/// Declares an enum stored as `TEXT` on both backends: its stored names, `as_str`,
/// `parse`, `ALL`, serde (as the stored name) and the diesel conversions. Reading a value the enum does not know is
/// a deserialization error (the query fails), never a silent default.
///
/// ```ignore
/// agentplane::db_enum! {
///     /// Lifecycle of a thing.
///     #[derive(serde::Serialize)]
///     pub enum ThingStatus { Active => "ACTIVE", Gone => "GONE" }
/// }
/// ```
#[macro_export]
macro_rules! db_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $stored:literal ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash,
            diesel::expression::AsExpression, diesel::deserialize::FromSqlRow,
        )]
        #[diesel(sql_type = diesel::sql_types::Text)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant ),*
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),*];

            /// The stored name.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $stored),*
                }
            }

            /// Parses a stored name.
            pub fn parse(s: &str) -> Option<Self> {
                match s {
                    $($stored => Some(Self::$variant),)*
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str> as serde::Deserialize<'de>>::deserialize(d)?;
                Self::parse(&s).ok_or_else(|| {
                    <D::Error as serde::de::Error>::unknown_variant(&s, &[$($stored),*])
                })
            }
        }

        impl diesel::serialize::ToSql<diesel::sql_types::Text, diesel::pg::Pg> for $name {
            fn to_sql<'b>(
                &'b self,
                out: &mut diesel::serialize::Output<'b, '_, diesel::pg::Pg>,
            ) -> diesel::serialize::Result {
                <str as diesel::serialize::ToSql<diesel::sql_types::Text, diesel::pg::Pg>>::to_sql(
                    self.as_str(),
                    out,
                )
            }
        }

        impl diesel::serialize::ToSql<diesel::sql_types::Text, diesel::sqlite::Sqlite> for $name {
            fn to_sql<'b>(
                &'b self,
                out: &mut diesel::serialize::Output<'b, '_, diesel::sqlite::Sqlite>,
            ) -> diesel::serialize::Result {
                out.set_value(self.as_str());
                Ok(diesel::serialize::IsNull::No)
            }
        }

        impl<DB> diesel::deserialize::FromSql<diesel::sql_types::Text, DB> for $name
        where
            DB: diesel::backend::Backend,
            String: diesel::deserialize::FromSql<diesel::sql_types::Text, DB>,
        {
            fn from_sql(bytes: DB::RawValue<'_>) -> diesel::deserialize::Result<Self> {
                let s = String::from_sql(bytes)?;
                Self::parse(&s).ok_or_else(|| {
                    format!(
                        "unknown {} value {s:?} in the database",
                        stringify!($name)
                    )
                    .into()
                })
            }
        }
    };
}
crate::id_type!(
    /// Identifies a trusted (persisted) GraphQL document.
    TrustedDocumentId
);
