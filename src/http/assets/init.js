// Boots GraphiQL against this server. Served by the binary; no external resources.
(function () {
  var httpUrl = new URL('/graphql', window.location.href).toString();
  var wsUrl = httpUrl.replace(/^http/, 'ws') + '/ws';
  function authHeader() {
    // GraphiQL keeps the headers editor in localStorage; reuse its Authorization for
    // subscriptions, which authenticate in connection_init.
    try {
      var headers = JSON.parse(window.localStorage.getItem('graphiql:headers') || '{}');
      return headers.Authorization || headers.authorization;
    } catch (e) {
      return undefined;
    }
  }
  var wsClient = graphqlWs.createClient({
    url: wsUrl,
    lazy: true,
    connectionParams: function () {
      var auth = authHeader();
      return auth ? { Authorization: auth } : {};
    },
  });
  var fetcher = GraphiQL.createFetcher({ url: httpUrl, wsClient: wsClient });
  var root = ReactDOM.createRoot(document.getElementById('graphiql'));
  root.render(
    React.createElement(GraphiQL, {
      fetcher: fetcher,
      defaultEditorToolsVisibility: true,
      defaultQuery: '{\n  serverInfo {\n    version\n    backend\n    uptimeSeconds\n  }\n}\n',
    })
  );
})();
