// The golden cases of the given folders, as the native runner reads them (`load_cases`): every
// `*.json` file, sorted by path, named by its file stem.
import { readdirSync, readFileSync } from 'node:fs';
import { basename, join } from 'node:path';

export function loadCases(dirs) {
  const paths = dirs.flatMap((dir) =>
    readdirSync(dir).filter((f) => f.endsWith('.json')).map((f) => join(dir, f)));
  paths.sort();
  return {
    names: paths.map((p) => basename(p, '.json')),
    texts: paths.map((p) => readFileSync(p, 'utf8')),
  };
}

// Options shared by both runners; the rest of the arguments are folders of cases.
export function parseArgs(argv, extra = {}) {
  const options = { dtype: 'f32', emaDtype: 'f32', packedF16: true, dirs: [], ...extra };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${arg} needs a value`);
      return argv[++i];
    };
    if (arg === '--dtype') options.dtype = value();
    else if (arg === '--ema-dtype') options.emaDtype = value();
    else if (arg === '--native-f16') options.packedF16 = false;
    else if (arg === '--backend' && 'backend' in extra) options.backend = value();
    else if (arg === '--compat' && 'compat' in extra) options.compat = true;
    else if (arg.startsWith('--')) throw new Error(`unknown option ${arg}`);
    else options.dirs.push(arg);
  }
  if (options.dirs.length === 0) throw new Error('name at least one folder of *.json cases');
  return options;
}

// The exit status, as the native runner's: 2 when nothing could run, 1 when a case failed or
// every case was refused (a run that ran no case proves nothing).
export function verdict([passed, refused, failed]) {
  if (failed > 0) return 1;
  if (passed === 0) {
    console.log(`FAILED: no case ran to completion (${refused} refused)`);
    return 1;
  }
  return 0;
}
