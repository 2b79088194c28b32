// Every GraphQL operation the dashboard sends. GraphQL Code Generator types them from
// ../../schema.graphql (`npm run codegen` writes src/gql/).
import { graphql } from './gql';

export const Login = graphql(`
  mutation Login($i: LoginInput!) {
    login(input: $i) { accessToken accessTokenExpiresAt refreshToken user { email } }
  }
`);

export const Refresh = graphql(`
  mutation Refresh($i: RefreshSessionInput!) {
    refreshSession(input: $i) { accessToken accessTokenExpiresAt refreshToken user { email } }
  }
`);

export const ExecutionEvents = graphql(`
  subscription ExecutionEvents($since: DateTime) {
    executionEvents(since: $since) {
      executionId sequence kind status stepId stepStatus at
      execution {
        id status promptTokens completionTokens costUsd
        workflow { name }
        steps { stepId status }
      }
    }
  }
`);

export const ClusterSummary = graphql(`
  subscription ClusterSummary {
    clusterSummary {
      queueDepth oldestQueuedSeconds gpusTotal
      gpuMemoryTotalMb gpuMemoryUsedMb gpuMemoryReservedMb
      nodesByStatus { status count }
    }
  }
`);

export const AuditEvents = graphql(`
  subscription AuditEvents($after: Int) {
    auditEvents(afterSequence: $after) {
      sequence action actorType resourceType outcome createdAt
    }
  }
`);
