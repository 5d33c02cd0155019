// The kiln dialect: its definition, the base class of its ops, and the ops
// that are not eager ops (constants and control flow).
//
// The eager ops themselves are not written here: `kiln-ods-gen` writes one
// ODS definition per op registered in eager/op.h (build/ir/KilnOps.td), so
// an op's operands, attributes and result-type inference come from its one
// definition in eager/.
#ifndef KILN_BASE_TD
#define KILN_BASE_TD

include "mlir/IR/OpBase.td"
include "mlir/IR/AttrTypeBase.td"
include "mlir/Interfaces/InferTypeOpInterface.td"
include "mlir/Interfaces/SideEffectInterfaces.td"
include "mlir/Interfaces/ControlFlowInterfaces.td"

def Kiln_Dialect : Dialect {
  let name = "kiln";
  let cppNamespace = "::kiln::ir";
  let summary = "Tensor ops traced from kiln programs";
  let description = [{
    One op per kiln primitive or composite, on builtin ranked tensor types
    whose dims may be dynamic (`?`). Result types come from the same meta
    rules the eager ops use.
  }];
  // Inherent attributes live in the attribute dictionary, so the generic
  // type inference and folding in ir/dialect.cpp read every op the same way.
  let usePropertiesForAttributes = 0;
  let hasConstantMaterializer = 1;
}

// Folding shared by every eager op (ir/dialect.h): constant folding through
// the eager kernels, and ops that are the identity for their types.
def KilnFoldable : NativeOpTrait<"KilnFoldable"> {
  let cppNamespace = "::kiln::ir";
}

class Kiln_Op<string mnemonic, list<Trait> traits = []>
    : Op<Kiln_Dialect, mnemonic, !listconcat(traits, [KilnFoldable])>;

def Kiln_ConstantOp : Op<Kiln_Dialect, "constant",
                         [ConstantLike, Pure, AllTypesMatch<["value", "result"]>]> {
  let summary = "A tensor constant (from folding)";
  let arguments = (ins ElementsAttr:$value);
  let results = (outs AnyRankedTensor:$result);
  let assemblyFormat = "attr-dict $value";
  let hasFolder = 1;
}

def Kiln_YieldOp : Op<Kiln_Dialect, "yield", [Pure, Terminator, ReturnLike]> {
  let summary = "The results of a kiln.cond branch or kiln.while_loop region";
  let arguments = (ins Variadic<AnyRankedTensor>:$values);
  let assemblyFormat = "attr-dict ($values^ `:` type($values))?";
}

// Regions take every value they read as a block argument: first the
// operands (the branch or loop values), then the outer values each region
// reads. `num_operands` and `num_then_refs` say where those lists split.
def Kiln_CondOp : Op<Kiln_Dialect, "cond", [RecursiveMemoryEffects]> {
  let summary = "kiln.cond: runs one of two regions on a one-element bool predicate";
  let arguments = (ins Variadic<AnyRankedTensor>:$inputs, I64Attr:$num_operands, I64Attr:$num_then_refs);
  let results = (outs Variadic<AnyRankedTensor>:$results);
  let regions = (region SizedRegion<1>:$then_region, SizedRegion<1>:$else_region);
  let assemblyFormat = "$inputs attr-dict `:` functional-type($inputs, $results) $then_region `else` $else_region";
  let hasVerifier = 1;
}

def Kiln_WhileLoopOp : Op<Kiln_Dialect, "while_loop", [RecursiveMemoryEffects]> {
  let summary = "kiln.while_loop: runs the body region while the cond region yields true";
  let arguments = (ins Variadic<AnyRankedTensor>:$inputs, I64Attr:$num_operands, I64Attr:$num_then_refs);
  let results = (outs Variadic<AnyRankedTensor>:$results);
  let regions = (region SizedRegion<1>:$cond_region, SizedRegion<1>:$body_region);
  let assemblyFormat = "$inputs attr-dict `:` functional-type($inputs, $results) $cond_region `do` $body_region";
  let hasVerifier = 1;
}

#endif  // KILN_BASE_TD
