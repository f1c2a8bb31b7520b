"""The fake RunPod's GraphQL schema: the operations skyward_ray and the runpod SDK send, and pod inputs
with exactly the fields RunPod's own senders put there.

RunPod publishes its GraphQL schema only as a browsable page (https://graphql-spec.runpod.io/), so the
pod input fields are the union of what RunPod's own clients send: the runpod SDK 1.11
(`runpod/api/mutations/pods.py`, `generate_pod_deployment_mutation`), RunPod's CLI (github.com/runpod/
runpodctl `api/pod.go` `CreatePodInput`, `internal/api/graphql.go` `CreatePodGQLInput`) and RunPod's
GraphQL guide (runpod/docs `sdks/graphql/manage-pods.mdx`). None of them has a global-networking field:
RunPod documents global networking only as the REST pod field `globalNetworking` (`tests.simrunpod.rest`),
so a query naming `globalNetwork` fails validation here, as graphql-core reports an unknown input field.
"""

from __future__ import annotations

from graphql import build_schema

_INPUT_FIELDS = """
  name: String
  imageName: String
  cloudType: CloudTypeEnum
  startSsh: Boolean
  gpuTypeId: String
  supportPublicIp: Boolean
  gpuCount: Int
  volumeInGb: Int
  minVcpuCount: Int
  minMemoryInGb: Int
  allowedCudaVersions: [String]
  dataCenterId: String
  dockerArgs: String
  countryCode: String
  containerDiskInGb: Int
  ports: String
  volumeMountPath: String
  env: [EnvironmentVariableInput]
  templateId: String
  networkVolumeId: String
  minDownload: Int
  minUpload: Int
  minCudaVersion: String
  containerRegistryAuthId: String
  stopAfter: String
  terminateAfter: String
  compliance: [String]
"""

SCHEMA = build_schema(f"""
type Query {{
  myself: User
  pod(input: PodFilter!): Pod
  gpuTypes(input: GpuTypeFilter): [GpuType]
}}
type Mutation {{
  podFindAndDeployOnDemand(input: PodFindAndDeployOnDemandInput!): Pod
  podRentInterruptable(input: PodRentInterruptableInput!): Pod
  podTerminate(input: PodTerminateInput!): Boolean
  podStop(input: PodStopInput!): Pod
}}
enum CloudTypeEnum {{ ALL SECURE COMMUNITY }}
input EnvironmentVariableInput {{ key: String! value: String }}
input PodFindAndDeployOnDemandInput {{ {_INPUT_FIELDS} }}
input PodRentInterruptableInput {{ bidPerGpu: Float! {_INPUT_FIELDS} }}
input PodTerminateInput {{ podId: String! }}
input PodStopInput {{ podId: String! incrementVersion: Boolean }}
input PodFilter {{ podId: String! }}
input GpuTypeFilter {{ id: String }}
input GpuLowestPriceInput {{ gpuCount: Int }}
type User {{ id: String pods: [Pod] clientBalance: Float currentSpendPerHr: Float spendLimit: Float }}
type LowestPrice {{ minimumBidPrice: Float uninterruptablePrice: Float }}
type GpuType {{
  id: String displayName: String manufacturer: String memoryInGb: Int cudaCores: Int maxGpuCount: Int
  secureCloud: Boolean communityCloud: Boolean securePrice: Float communityPrice: Float
  oneMonthPrice: Float threeMonthPrice: Float oneWeekPrice: Float communitySpotPrice: Float secureSpotPrice: Float
  lowestPrice(input: GpuLowestPriceInput): LowestPrice
}}
type PodRuntimePorts {{ ip: String isIpPublic: Boolean privatePort: Int publicPort: Int type: String }}
type PodRuntime {{ uptimeInSeconds: Int ports: [PodRuntimePorts] }}
type PodMachine {{ podHostId: String gpuDisplayName: String }}
type Pod {{
  id: String name: String containerDiskInGb: Int costPerHr: Float desiredStatus: String dockerArgs: String
  dockerId: String env: [String] gpuCount: Int imageName: String lastStatusChange: String machineId: String
  memoryInGb: Float podType: String port: Int ports: String uptimeSeconds: Int vcpuCount: Float
  volumeInGb: Float volumeMountPath: String runtime: PodRuntime machine: PodMachine
}}
""")
