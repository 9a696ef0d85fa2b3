export declare function buildEmulator(): Promise<string>;
