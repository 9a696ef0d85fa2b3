import { isHostTensor, type HostTensor, type Tensor } from '../tensor.js';
import { FlashMLAError } from '../errors.js';
import type { DecodePlan, DensePlan, SparsePlan } from '../plan.js';
import type { DecodeArgs, DecodeOptions, DecodeResult } from '../types.js';
import { validateDecode } from '../validate/index.js';
import { attendDense } from './dense.js';
import { allocateOutputs, writeRow } from './finalize.js';
import { jsKernels, type TileKernels } from './kernels.js';
import { attendSparse, candidateCount } from './sparse.js';

export interface ReferenceOptions {
  /** Worker threads (default: available cores). */
  threads?: number;
  /** Which tile kernels to use (default: the fastest available). */
  kernels?: TileKernels;
}

function requireHost(plan: DecodePlan): void {
  const tensors: [Tensor, string][] = [[plan.q.tensor, 'q']];
  if (plan.kind === 'dense') {
    tensors.push([plan.kCache.tensor, 'kCache'], [plan.blockTable.tensor, 'blockTable'], [plan.cacheSeqlens.tensor, 'cacheSeqlens']);
  } else {
    tensors.push([plan.main.cache.tensor, 'kCache'], [plan.main.indices.tensor, 'indices']);
    if (plan.main.topkLength) tensors.push([plan.main.topkLength.tensor, 'topkLength']);
    if (plan.attnSink) tensors.push([plan.attnSink.tensor, 'attnSink']);
    if (plan.extra) {
      tensors.push([plan.extra.cache.tensor, 'extraKCache'], [plan.extra.indices.tensor, 'extraIndicesInKvcache']);
      if (plan.extra.topkLength) tensors.push([plan.extra.topkLength.tensor, 'extraTopkLength']);
    }
  }
  for (const [t, name] of tensors) {
    if (!isHostTensor(t)) {
      throw new FlashMLAError('E_DEVICE', `${name} is a device tensor; the reference backend takes host tensors (download it first)`, name);
    }
  }
}

function runDense(plan: DensePlan, kernels: TileKernels, res: DecodeResult<HostTensor>): void {
  const hpk = plan.hQ / plan.hK;
  for (let i = 0; i < plan.b; i++) {
    for (let k = 0; k < plan.hK; k++) {
      const p = attendDense(plan, { i, k, t0: 0, t1: plan.seqlens![i]! }, kernels);
      for (let s = 0; s < plan.sQ; s++) {
        for (let j = 0; j < hpk; j++) writeRow(res, plan, p, s * hpk + j, i, s, k * hpk + j, null);
      }
    }
  }
}

function sinkValues(plan: SparsePlan): Float32Array | null {
  if (!plan.attnSink) return null;
  const t = plan.attnSink.tensor as HostTensor<'fp32'>;
  const v = plan.attnSink.view;
  return Float32Array.from({ length: plan.hQ }, (_, h) => t.data[v.offset + h * v.strides[0]!]!);
}

function runSparse(plan: SparsePlan, kernels: TileKernels, res: DecodeResult<HostTensor>): void {
  const sinks = sinkValues(plan);
  const n = candidateCount(plan);
  for (let i = 0; i < plan.b; i++) {
    for (let s = 0; s < plan.sQ; s++) {
      const p = attendSparse(plan, { i, s, p0: 0, p1: n }, kernels);
      for (let h = 0; h < plan.hQ; h++) writeRow(res, plan, p, h, i, s, h, sinks ? sinks[h]! : null);
    }
  }
}

/** Runs a validated plan on the CPU with FlashMLA's semantics (SPEC §6). */
export async function runReference(plan: DecodePlan, opts: ReferenceOptions = {}): Promise<DecodeResult<HostTensor>> {
  requireHost(plan);
  const kernels = opts.kernels ?? jsKernels;
  const res = allocateOutputs(plan);
  if (plan.kind === 'dense') runDense(plan, kernels, res);
  else runSparse(plan, kernels, res);
  return res;
}

/** `flashMlaWithKvCache` on the reference backend: validate, bind the sched meta, run. */
export async function referenceDecode(args: DecodeArgs, options: DecodeOptions & { kernels?: TileKernels } = {}): Promise<DecodeResult<HostTensor>> {
  const plan = validateDecode(args);
  args.schedMeta.bind(plan.config);
  return runReference(plan, { threads: options.threads, kernels: options.kernels });
}
