// Every export of the public entry points, and every public member of its classes and interfaces,
// has a doc comment (what the published .d.ts shows users). Internal members say @internal.
import { fileURLToPath } from 'node:url';
import ts from 'typescript';
import { expect, it } from 'vitest';

const root = fileURLToPath(new URL('../../', import.meta.url));
const ENTRIES = ['src/index.ts', 'src/formats/index.ts', 'src/engram/index.ts', 'src/testing.ts'].map((f) => root + f);

function undocumented(): string[] {
  const program = ts.createProgram(ENTRIES, { module: ts.ModuleKind.NodeNext, moduleResolution: ts.ModuleResolutionKind.NodeNext, target: ts.ScriptTarget.ES2022, strict: true });
  const checker = program.getTypeChecker();
  const missing = new Set<string>();
  const seen = new Set<ts.Symbol>();
  const hasDoc = (d: ts.Node): boolean => ts.getJSDocCommentsAndTags(d).length > 0;
  const internal = (d: ts.Node): boolean => ts.getJSDocTags(d).some((t) => t.tagName.text === 'internal');
  const where = (d: ts.Node, name: string): string =>
    `${d.getSourceFile().fileName.slice(root.length)}:${d.getSourceFile().getLineAndCharacterOfPosition(d.getStart()).line + 1} ${name}`;
  // An overloaded function's implementation and a private constructor are not part of the API.
  const notPublic = (d: ts.Node): boolean =>
    ((ts.isFunctionDeclaration(d) || ts.isMethodDeclaration(d)) && d.body !== undefined && (ts.getCombinedModifierFlags(d as ts.Declaration) & ts.ModifierFlags.Private) === 0 &&
      ((d.parent as ts.Node & { statements?: ts.NodeArray<ts.Node>; members?: ts.NodeArray<ts.Node> }).statements ?? (d.parent as { members?: ts.NodeArray<ts.Node> }).members ?? [])
        .some((o) => o !== d && (ts.isFunctionDeclaration(o) || ts.isMethodDeclaration(o)) && o.body === undefined && o.name?.getText() === (d as ts.FunctionDeclaration).name?.getText()))
    || (ts.isConstructorDeclaration(d) && (ts.getCombinedModifierFlags(d) & ts.ModifierFlags.Private) !== 0);
  const visit = (symbol: ts.Symbol): void => {
    const sym = symbol.flags & ts.SymbolFlags.Alias ? checker.getAliasedSymbol(symbol) : symbol;
    if (seen.has(sym)) return;
    seen.add(sym);
    for (const d of sym.declarations ?? []) {
      if (d.getSourceFile().fileName.includes('node_modules') || internal(d) || notPublic(d)) continue;
      const documented = hasDoc(d) || (ts.isVariableDeclaration(d) && hasDoc(d.parent.parent));
      if (!documented) missing.add(where(d, sym.name));
      if (!ts.isClassDeclaration(d) && !ts.isInterfaceDeclaration(d)) continue;
      for (const m of d.members) {
        if (internal(m) || notPublic(m)) continue;
        if (m.name !== undefined && (ts.isPrivateIdentifier(m.name) || (ts.getCombinedModifierFlags(m as ts.Declaration) & (ts.ModifierFlags.Private | ts.ModifierFlags.Protected)) !== 0)) continue;
        if (!hasDoc(m)) missing.add(where(m, `${sym.name}.${m.name?.getText() ?? 'constructor'}`));
      }
    }
  };
  for (const e of ENTRIES) for (const s of checker.getExportsOfModule(checker.getSymbolAtLocation(program.getSourceFile(e)!)!)) visit(s);
  return [...missing].sort();
}

it('every public export and member has a doc comment', () => {
  expect(undocumented()).toEqual([]);
}, 60_000);
