//! The GraphQL schema root: each domain contributes its own Query/Mutation/Subscription
//! objects, merged here. Also the request-scoped context every resolver reads.

pub mod cost;
pub mod documents;
pub mod enums;
pub mod errors;
pub mod extensions;
pub mod guards;
pub mod limits;
pub mod loaders;
pub mod relay;
pub mod system;

use std::sync::Arc;

use async_graphql::{Context, MergedObject, MergedSubscription, SDLExportOptions, Schema};

use crate::app::App;
use crate::error::{AppError, AppResult};

/// The executable schema type.
pub type AppSchema = Schema<Query, Mutation, Subscription>;

/// All query fields.
#[derive(MergedObject, Default)]
pub struct Query(
    system::SystemQuery,
    relay_root::RelayQuery,
    crate::auth::graphql::AuthQuery,
    crate::tenancy::graphql::TenancyQuery,
    crate::tenancy::graphql::TeamQuery,
    crate::workflows::graphql::WorkflowQuery,
    crate::executions::graphql::ExecutionQuery,
    crate::secrets::graphql::SecretQuery,
    crate::cluster::graphql::ClusterQuery,
    crate::audit::graphql::AuditQuery,
    crate::sso::graphql::SsoQuery,
);

/// All mutation fields.
#[derive(MergedObject, Default)]
pub struct Mutation(
    crate::auth::graphql::AuthMutation,
    crate::auth::graphql::mfa::MfaMutation,
    crate::tenancy::graphql::TenancyMutation,
    crate::tenancy::graphql::TeamMutation,
    crate::workflows::graphql::WorkflowMutation,
    crate::executions::graphql::ExecutionMutation,
    crate::executions::graphql::ScheduleMutation,
    crate::secrets::graphql::SecretMutation,
    crate::cluster::graphql::ClusterMutation,
    crate::audit::graphql::PrivacyMutation,
    crate::sso::graphql::SsoMutation,
);

/// All subscription fields.
#[derive(MergedSubscription, Default)]
pub struct Subscription(
    system::SystemSubscription,
    crate::executions::graphql::ExecutionSubscription,
    crate::cluster::graphql::ClusterSubscription,
    crate::audit::graphql::AuditSubscription,
);

mod relay_root;

/// Default limits used when building the schema without a running app (`agentplane schema`).
const DEFAULT_DEPTH: usize = 12;
const DEFAULT_COMPLEXITY: usize = 10_000;
const DEFAULT_DOCUMENT_LIMITS: limits::DocumentLimits = limits::DocumentLimits {
    max_selections: 10_000,
    max_fragments: 100,
    max_spreads: 500,
    max_depth: DEFAULT_DEPTH,
};

/// Builds the schema. With `app`, limits come from its config and resolvers can reach
/// state; without it (SDL export), only the type system is needed.
pub fn build_schema(app: Option<Arc<App>>) -> AppSchema {
    build(app, true)
}

/// The schema for callers without credentials: "Did you mean …?" suggestions only when
/// `graphql.anonymous_suggestions` allows them (they help map a schema one guess at a
/// time).
pub fn build_anonymous_schema(app: Arc<App>) -> AppSchema {
    let suggestions = app.config.graphql.anonymous_suggestions;
    build(Some(app), suggestions)
}

fn build(app: Option<Arc<App>>, suggestions: bool) -> AppSchema {
    // Depth is checked with the other document limits (`limits::DocumentLimits`), which
    // leave introspection subtrees out; async-graphql's own depth limit would refuse the
    // standard introspection query GraphiQL and code generators send.
    let complexity = app
        .as_ref()
        .map_or(DEFAULT_COMPLEXITY, |a| a.config.graphql.max_complexity);
    let document_limits = app.as_ref().map_or(DEFAULT_DOCUMENT_LIMITS, |a| {
        limits::DocumentLimits::from_config(&a.config.graphql)
    });
    let mut builder = Schema::build(
        Query::default(),
        Mutation::default(),
        Subscription::default(),
    )
    .limit_complexity(complexity)
    .extension(extensions::Hooks::new(document_limits));
    if !suggestions {
        builder = builder.disable_suggestions();
    }
    if let Some(app) = app {
        builder = builder.data(app);
    }
    builder.finish()
}

/// The SDL, sorted so diffs of `schema.graphql` are readable.
pub fn sdl() -> String {
    build_schema(None).sdl_with_options(
        SDLExportOptions::new()
            .sorted_fields()
            .sorted_arguments()
            .sorted_enum_items(),
    )
}

/// The shared application state from a resolver context.
pub fn app<'a>(ctx: &Context<'a>) -> AppResult<&'a Arc<App>> {
    ctx.data::<Arc<App>>()
        .map_err(|_| AppError::internal(anyhow::anyhow!("schema built without application state")))
}

pub use crate::request::{ClientInfo, RequestId};

/// The caller of the current request, or `UNAUTHENTICATED`.
pub fn principal<'a>(ctx: &Context<'a>) -> AppResult<&'a crate::auth::Principal> {
    ctx.data_opt::<crate::auth::Principal>()
        .ok_or_else(|| AppError::unauthenticated("sign in to use this field"))
}

/// Who is calling and from where, for the audit records of this request.
pub fn origin(ctx: &Context<'_>) -> AppResult<crate::audit::Origin> {
    Ok(principal(ctx)?.origin(ctx.data_opt::<ClientInfo>(), ctx.data_opt::<RequestId>()))
}

/// A subscription's item type, resolved through a boxed future. async-graphql keeps the
/// slot for one item's resolution (the object's resolution and the extensions' around it)
/// inside each subscriber's stream for as long as the subscriber stays, idle or not; this
/// leaves a pointer there instead (#15: per idle subscriber). The schema sees `T`.
pub struct Lean<T>(pub T);

impl<T: async_graphql::OutputType> async_graphql::OutputType for Lean<T> {
    fn type_name() -> std::borrow::Cow<'static, str> {
        T::type_name()
    }

    fn qualified_type_name() -> String {
        T::qualified_type_name()
    }

    fn introspection_type_name(&self) -> std::borrow::Cow<'static, str> {
        self.0.introspection_type_name()
    }

    fn create_type_info(registry: &mut async_graphql::registry::Registry) -> String {
        T::create_type_info(registry)
    }

    fn resolve(
        &self,
        ctx: &async_graphql::ContextSelectionSet<'_>,
        field: &async_graphql::Positioned<async_graphql::parser::types::Field>,
    ) -> impl std::future::Future<Output = async_graphql::ServerResult<async_graphql::Value>> + Send
    {
        Box::pin(self.0.resolve(ctx, field))
    }
}

/// A list whose items resolve without the extension's per-item hook. While a schema has
/// an extension, async-graphql passes each item of a `Vec` through every extension's
/// `resolve` (a boxed future, and the list's type name formatted anew, per item) as if
/// it were a field; here items resolve as they do in a schema without extensions, and
/// their own fields still pass the hook. For lists of many small objects (a nested
/// read's 500 executions). The schema sees `[T!]!`.
pub struct List<T>(pub Vec<T>);

impl<T: async_graphql::OutputType> async_graphql::OutputType for List<T> {
    fn type_name() -> std::borrow::Cow<'static, str> {
        Vec::<T>::type_name()
    }

    fn qualified_type_name() -> String {
        Vec::<T>::qualified_type_name()
    }

    fn create_type_info(registry: &mut async_graphql::registry::Registry) -> String {
        Vec::<T>::create_type_info(registry)
    }

    async fn resolve(
        &self,
        ctx: &async_graphql::ContextSelectionSet<'_>,
        field: &async_graphql::Positioned<async_graphql::parser::types::Field>,
    ) -> async_graphql::ServerResult<async_graphql::Value> {
        let items = self.0.iter().enumerate().map(|(idx, item)| {
            let ctx_idx = ctx.with_index(idx);
            async move {
                item.resolve(&ctx_idx, field)
                    .await
                    .map_err(|e| ctx_idx.set_error_path(e))
            }
        });
        Ok(async_graphql::Value::List(
            futures_util::future::try_join_all(items).await?,
        ))
    }
}
