import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { FlashMLAError } from '../../../src/errors.js';
import { checkConfig, configFromHf, paperDemoConfig, type EngramConfig } from '../../../src/engram/config.js';

const v41Text = readFileSync(new URL('../../fixtures/engram/v41-config.json', import.meta.url), 'utf8');
const v41 = JSON.parse(v41Text) as { text_config: Record<string, unknown> };

/** The FlashMLAError `f` throws (fails the test when it throws nothing or something else). */
function errorOf(f: () => unknown): FlashMLAError {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(FlashMLAError);
    return e as FlashMLAError;
  }
  throw new Error('expected a FlashMLAError');
}

describe('configFromHf', () => {
  it('reads V4.1 (fields under text_config) from text or object', () => {
    for (const input of [v41Text, v41]) {
      const c = configFromHf(input);
      expect(c).toEqual({
        variant: 'v4.1', layerIds: [1, 14], maxNgramSize: 4, nHeads: 8, headDim: 256,
        vocabSizes: [16000000, 16000000, 16000000], compressedVocabSize: 99092, padTokenId: 2,
        numEmbeddings: [384006168, 384016682], seed: 0, hcMult: 4, hiddenSize: 5120, rmsNormEps: 1e-6,
        tableDtype: 'fp8-e4m3-e8m0', convKernel: undefined, convDilation: undefined,
      } satisfies EngramConfig);
      expect(Object.isFrozen(c)).toBe(true);
    }
  });

  it('reads top-level fields, per-order vocab lists, engram_seed and the demo variant', () => {
    const c = configFromHf({ ...v41.text_config, engram_max_ngram_size: 3, engram_vocab_size: [646400, 700000], engram_seed: 7,
      engram_num_embeddings: undefined, engram_compressed_vocab_size: undefined, rms_norm_eps: undefined }, { variant: 'paper-demo' });
    expect(c.vocabSizes).toEqual([646400, 700000]);
    expect(c.seed).toBe(7);
    expect(c.numEmbeddings).toBeUndefined();
    expect(c.compressedVocabSize).toBeUndefined();
    expect(c.rmsNormEps).toBeUndefined();
    expect([c.variant, c.tableDtype, c.convKernel, c.convDilation]).toEqual(['paper-demo', 'fp32', 4, 3]);
    const padId = configFromHf({ ...v41.text_config, engram_pad_token_id: undefined, engram_pad_id: 8 });
    expect(padId.padTokenId).toBe(8);
    expect(configFromHf({ ...v41.text_config, engram_pad_id: 2 }).padTokenId).toBe(2);
  });

  it('names every missing or invalid field', () => {
    const required = ['engram_layer_ids', 'engram_max_ngram_size', 'engram_n_heads', 'engram_head_dim', 'engram_vocab_size',
      'engram_pad_token_id', 'hc_mult', 'hidden_size'];
    for (const key of required) {
      const text = { ...v41.text_config };
      delete text[key];
      const e = errorOf(() => configFromHf({ text_config: text }));
      // Without engram_layer_ids the text_config is not recognised and the top level is read.
      expect(e.argument).toBe(key === 'engram_layer_ids' ? 'config.engram_layer_ids' : `config.text_config.${key}`);
      expect(e.code).toBe('E_VALUE');
    }
    const bad: [string, unknown, string][] = [
      ['engram_layer_ids', [1, -2], 'config.text_config.engram_layer_ids[1]'],
      ['engram_layer_ids', [1, 1], 'config.text_config.engram_layer_ids'],
      ['engram_layer_ids', [], 'config.text_config.engram_layer_ids'],
      ['engram_max_ngram_size', 1, 'config.text_config.engram_max_ngram_size'],
      ['engram_n_heads', 2.5, 'config.text_config.engram_n_heads'],
      ['engram_vocab_size', [16000000, 5], 'config.text_config.engram_vocab_size'],
      ['engram_vocab_size', '16000000', 'config.text_config.engram_vocab_size'],
      ['engram_compressed_vocab_size', 0, 'config.text_config.engram_compressed_vocab_size'],
      ['engram_num_embeddings', [1], 'config.text_config.engram_num_embeddings'],
      ['engram_pad_token_id', -1, 'config.text_config.engram_pad_token_id'],
      ['rms_norm_eps', 0, 'config.text_config.rms_norm_eps'],
      ['hidden_size', null, 'config.text_config.hidden_size'],
    ];
    for (const [key, value, argument] of bad) {
      expect(errorOf(() => configFromHf({ text_config: { ...v41.text_config, [key]: value } })).argument, key).toBe(argument);
    }
    expect(errorOf(() => configFromHf({ text_config: { ...v41.text_config, engram_pad_id: 3 } })).argument).toBe('config.text_config.engram_pad_id');
    expect(errorOf(() => configFromHf('{ not json')).argument).toBe('configJson');
    expect(errorOf(() => configFromHf('[1]')).argument).toBe('configJson');
    expect(errorOf(() => configFromHf(v41, { variant: 'v5' as never })).argument).toBe('options.variant');
  });
});

describe('paperDemoConfig', () => {
  it('gives the demo parameters (deepseek-ai/Engram engram_demo_v1.py)', () => {
    const c = paperDemoConfig();
    expect(c).toMatchObject({ variant: 'paper-demo', layerIds: [1, 15], maxNgramSize: 3, nHeads: 8, headDim: 64,
      vocabSizes: [646400, 646400], compressedVocabSize: undefined, padTokenId: 2, seed: 0, hcMult: 4, hiddenSize: 1024,
      tableDtype: 'fp32', convKernel: 4, convDilation: 3 });
  });

  it('applies and checks overrides', () => {
    expect(paperDemoConfig({ compressedVocabSize: 129280 }).compressedVocabSize).toBe(129280);
    expect(paperDemoConfig({ maxNgramSize: 4 }).vocabSizes).toEqual([646400, 646400, 646400]);
    expect(errorOf(() => paperDemoConfig({ nHeads: 0 })).argument).toBe('config.nHeads');
    expect(errorOf(() => paperDemoConfig({ vocabSizes: [1, 2] })).argument).toBe('config.vocabSizes[0]');
    expect(errorOf(() => checkConfig({ ...paperDemoConfig(), tableDtype: 'bf16' as never })).argument).toBe('config.tableDtype');
  });
});
