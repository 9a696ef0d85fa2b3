import { doctorReport, formatDoctor } from '../backend-info.js';
import { integer, MAX_DEVICE, str, type Command } from './args.js';

export const doctor: Command = {
  name: 'doctor',
  usage: '[--library PATH] [--device N] [--json]',
  summary: 'Reports which backend `auto` picks and why: native addon, FlashMLA build and its preloads, CUDA\n' +
    'runtime and driver, devices, resolved entry points (decode and sparse prefill) and features, on the\n' +
    'device and per architecture (sm90, sm100). The build is loaded in a child process, so a broken\n' +
    'build cannot take this one down.',
  options: {
    library: { type: 'string', value: 'PATH', help: 'FlashMLA build to inspect (default: FLASHMLA_LIBRARY, then the installed flash_mla package)' },
    device: { type: 'string', value: 'N', help: 'CUDA device to report features for (default 0)' },
    json: { type: 'boolean', help: 'print the report as JSON' },
  },
  async run(values) {
    const device = values.device === undefined ? undefined : integer(values, 'device', 0, 0, MAX_DEVICE);
    const info = await doctorReport({ library: str(values, 'library'), device });
    process.stdout.write(values.json === true ? `${JSON.stringify(info, null, 2)}\n` : `${formatDoctor(info)}\n`);
    return 0;
  },
};
