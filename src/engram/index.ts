/**
 * flashmla-node/engram: DeepSeek's Engram conditional memory served from host memory
 * (docs/engram.md). Hashed N-gram row ids known before layer 0 runs, tables opened in place
 * (safetensors checkpoint shards or the package's own format), a store that prefetches each
 * step's rows off the event loop, and the CPU reference of the gate and forward passes.
 */
export { configFromHf, paperDemoConfig, type ConfigFromHfOptions, type EngramConfig, type EngramVariant } from './config.js';
export { layout, type EngramLayerLayout, type LayoutOptions } from './layout.js';
export type { TokenMap } from './types.js';
export { buildTokenMap, type BuildTokenMapOptions } from './token-map.js';
export { NgramHasher, type HashHistory, type HashOptions, type HashTier, type NgramHasherOptions } from './hash.js';
export { HashSession, type AppendOptions } from './hash-session.js';
export type { IdsInput, MaskInput } from './hash-plan.js';
export {
  EngramTable,
  type EngramLookupOptions, type EngramLookupRawOptions, type EngramTableIo, type EngramTableKind, type EngramTableOpenOptions,
} from './table.js';
export type { EngramRowFormat } from './table-placement.js';
export { writeEngramTable, convertTable, type ConvertTableOptions, type EngramRowSource, type WriteEngramTableOptions } from './table-writer.js';
export { verifyTable, type EngramTableFile, type SectionVerification, type TableSection, type TableVerification, type VerifyTableOptions } from './table-format.js';
export { inspectTable, type InspectedTable, type TableInspection } from './table-inspect.js';
export {
  EngramStore,
  type EngramPrefetchFormat, type EngramPrefetchOptions, type EngramRequest, type EngramStep, type EngramStepRequest, type EngramStoreOptions,
} from './store.js';
export { gate, type GateArgs, type GateOptions, type GateResult, type GateSign } from './gate.js';
export { forwardV41, type ForwardV41Args, type ForwardV41Result } from './forward-v41.js';
export {
  forwardDemo, demoConvState, type DemoConvState, type ForwardDemoArgs, type ForwardDemoOptions, type ForwardDemoResult,
} from './forward-demo.js';
export { quantizeActivationE4m3, type QuantizedActivation } from './act-quant.js';
export {
  calcDiff, gateOracle, forwardV41Oracle, forwardDemoOracle, quantizeActivationOracle,
  type ForwardDemoOracleResult, type ForwardV41OracleResult, type GateOracleResult,
} from './oracle.js';
