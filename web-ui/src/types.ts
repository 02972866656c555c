// The admin API's objects, generated from openapi/openapi.json into api-types.ts
// (`npm run types`); named here as the dashboard uses them.
import type { components } from './api-types';

type Schemas = components['schemas'];

export type TransportKind = Schemas['TransportKind'];
export type TransportStats = Schemas['TransportStats'];
export type Stats = Schemas['Stats'];
export type StreamInfo = Schemas['StreamInfo'];
export type SessionInfo = Schemas['SessionInfo'];
export type SessionPage = Schemas['SessionPage'];
export type SessionEvent = Schemas['Event'];
export type Tunables = Schemas['Tunables'];
export type ListenerConfig = Schemas['ListenerConfig'];
export type RunningConfig = Schemas['RunningConfig'];
export type CaptureResult = Schemas['CaptureResult'];
